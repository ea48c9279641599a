/**
 * Telling an image format from its first bytes, without letting QEMU probe. The signatures
 * are those of QEMU's own probe functions (`block/qcow2.c` `qcow2_probe`, `block/qed.c`,
 * `block/vmdk.c`, `block/vdi.c`, `block/vhdx.c`, `block/crypto.c` for LUKS,
 * `block/vpc.c`), which decide what a file "is" when no format is given. guestbackup never
 * guesses a format from them: it uses them to refuse a file declared (or assumed) raw that
 * QEMU would take for an image, and to check a declared format.
 */

/** Formats whose signature is recognised. */
export type DetectedFormat = 'qcow2' | 'qed' | 'vmdk' | 'vdi' | 'vhdx' | 'luks' | 'vpc'

/** Bytes of the head of a file {@link detectImageFormat} looks at. */
export const MAGIC_BYTES = 512

const at = (buf: Buffer, offset: number, sig: string | Buffer): boolean => {
  const s = typeof sig === 'string' ? Buffer.from(sig, 'latin1') : sig
  return buf.length >= offset + s.length && buf.subarray(offset, offset + s.length).equals(s)
}

/** The image format whose signature `head` (the first {@link MAGIC_BYTES}) carries, if any. */
export const detectImageFormat = (head: Buffer): DetectedFormat | undefined => {
  if (at(head, 0, 'QFI\xfb')) return 'qcow2'
  if (at(head, 0, 'QED\0')) return 'qed'
  // Hosted sparse extent, ESX COW disk, or a text descriptor naming the extents.
  if (at(head, 0, 'KDMV') || at(head, 0, 'COWD') || at(head, 0, '# Disk DescriptorFile')) {
    return 'vmdk'
  }
  if (head.length >= 68 && head.readUInt32LE(64) === 0xbeda107f) return 'vdi'
  if (at(head, 0, 'vhdxfile')) return 'vhdx'
  if (at(head, 0, Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]))) return 'luks'
  if (at(head, 0, 'conectix')) return 'vpc'
  return undefined
}
