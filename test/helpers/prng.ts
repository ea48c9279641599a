/**
 * A seeded PRNG for tests whose random choices must be replayable from a printed seed
 * (Math.random cannot be seeded).
 */

/** mulberry32: 32-bit state, uniform floats in [0, 1); plenty for picking test moments. */
export const mulberry32 = (seed: number): (() => number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** A seed from `env[name]` (an integer 0..2^32-1), or undefined when unset or empty. */
export const seedFromEnv = (name: string): number | undefined => {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return undefined
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
    throw new Error(`${name}=${raw}: expected an integer 0..4294967295`)
  }
  return n
}
