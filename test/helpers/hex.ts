/**
 * Hex literals for golden byte vectors: each argument is one wire field, so a vector reads as
 * the spec's field list with a comment per field.
 */

/**
 * Concatenate hex fields into a Buffer. Throws on an odd length or a non-hex digit, where
 * `Buffer.from(s, 'hex')` would silently stop at the first bad character.
 */
export const hex = (...fields: string[]): Buffer => {
  for (const f of fields) {
    if (!/^(?:[0-9a-f]{2})+$/.test(f)) throw new Error(`bad hex field ${JSON.stringify(f)}`)
  }
  return Buffer.from(fields.join(''), 'hex')
}
