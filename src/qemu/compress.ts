/**
 * Compressed qcow2 backup images, written by QEMU itself so that plain `qemu-img` reads them:
 * the image is created with `compression_type=zstd` (a qcow2 v3 header field since QEMU 5.1,
 * docs/interop/qcow2.txt "compression type") and served through the `compress` filter driver
 * (block/filter-compress.c), which turns every write into a compressed cluster write.
 *
 * What qcow2 demands of those writes (block/qcow2.c `qcow2_co_pwritev_compressed_part`,
 * block/qcow2-cluster.c `qcow2_alloc_compressed_cluster_offset`), and so the copy engine:
 * - whole clusters, cluster-aligned: the filter sets the request alignment to the cluster size,
 *   so QEMU pads a smaller write with a read-modify-write of the whole cluster;
 * - each cluster written once: "Compression can't overwrite anything", a second write into an
 *   allocated cluster (for instance the rest of a padded one) fails with EIO;
 * - a zero write of whole clusters passes through as zero clusters (nothing compressed), but a
 *   partial one is padded into a compressed data cluster;
 * - the disk size a multiple of the cluster size: the filter cannot be opened writable
 *   otherwise ("Image size is not a multiple of request alignment").
 * A cluster zstd cannot shrink is stored as a normal cluster, so random data costs no space.
 */
import type { Qcow2Spec } from './chain.ts'

/** The `compress` filter over a qcow2 node (block/filter-compress.c). */
export interface CompressSpec {
  driver: 'compress'
  file: Qcow2Spec
}

/** qcow2's default cluster size, the one used when the disk size allows it. */
export const COMPRESSED_CLUSTER_MAX = 64 * 1024

/**
 * Smallest cluster worth compressing: below it zstd gains little and qcow2's metadata grows
 * (one 8-byte L2 entry per cluster).
 */
export const COMPRESSED_CLUSTER_MIN = 4 * 1024

/**
 * The cluster size of a compressed image of a disk of `size` bytes: the largest power of two up
 * to {@link COMPRESSED_CLUSTER_MAX} that divides the size (the filter's constraint), or
 * undefined when that is below {@link COMPRESSED_CLUSTER_MIN} (the disk is stored uncompressed).
 */
export const compressedClusterSize = (size: number): number | undefined => {
  if (!Number.isSafeInteger(size) || size <= 0) return undefined
  let cluster = COMPRESSED_CLUSTER_MAX
  while (cluster >= COMPRESSED_CLUSTER_MIN && size % cluster !== 0) cluster /= 2
  return cluster >= COMPRESSED_CLUSTER_MIN ? cluster : undefined
}

/** The compress filter over `image`: what qemu-nbd serves as a compressed target. */
export const compressSpec = (image: Qcow2Spec): CompressSpec => ({
  driver: 'compress',
  file: image,
})
