/**
 * The disk image formats guestbackup names, apart from the qemu-img wrapper (img.ts) so that
 * the CLI's option parsing does not load it.
 */

/** Image formats guestbackup writes (qcow2, raw) or reads as backup sources (all). */
export type ImageFormat = 'qcow2' | 'raw' | 'vmdk' | 'vdi' | 'vhdx' | 'qed'

/** Every {@link ImageFormat}, for option parsing. */
export const IMAGE_FORMATS: readonly ImageFormat[] = ['raw', 'qcow2', 'vmdk', 'vdi', 'vhdx', 'qed']
