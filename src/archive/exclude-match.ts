/**
 * GNU tar's exclude matching, reimplemented so that a squashfs image can leave out exactly the
 * members `tar c` leaves out for the same `--exclude` arguments ({@link tarExcludeArgs}).
 *
 * tar (1.34) hands each member name (`.`, `./etc`, `./etc/passwd` when archiving `.`) to gnulib
 * `lib/exclude.c` `excluded_file_name` with `EXCLUDE_WILDCARDS | FNM_LEADING_DIR` (its
 * `--wildcards`, `--recursion` and `--wildcards-match-slash` defaults for exclusion), plus
 * `EXCLUDE_ANCHORED` after `--anchored`:
 *
 * - a pattern with wildcards (gnulib `fnmatch_pattern_has_wildcards`: an unescaped `*`, `?`,
 *   `[` or `]`) goes to fnmatch(3) without `FNM_PATHNAME` or `FNM_PERIOD`, so `*`, `?` and
 *   brackets match `/` and leading dots; `FNM_LEADING_DIR` also accepts a match of the name up
 *   to a `/`. Unanchored, it is tried on the name and on every suffix after a `/`
 *   (`exclude_fnmatch`);
 * - any other pattern, with its backslashes removed (`unescape_pattern`), is compared exactly
 *   with the name, its leading directories and, unanchored, those of every suffix after a `/`
 *   (`file_name_matches`).
 *
 * In a UTF-8 locale glibc's fnmatch (2.36, as measured against tar here) matches when either
 * the character-wise or the byte-wise comparison does: `?` matches `é` as one character, and
 * `??` as two bytes. Character classes of non-ASCII characters follow Unicode properties,
 * which may differ from glibc's tables in rare cases.
 *
 * Names and patterns are *byte strings*: one char per byte (latin1), so that file names that
 * are not UTF-8 keep their bytes. Pure functions; no I/O.
 */

/** Options of the matcher. */
export interface MatchOptions {
  /** tar runs in a UTF-8 locale (see {@link localeIsUtf8}). */
  readonly utf8: boolean
}

/** A string's UTF-8 bytes as a byte string (one char per byte). */
export const toByteString = (s: string): string => Buffer.from(s, 'utf8').toString('latin1')

/**
 * Whether a process with this environment runs in a UTF-8 locale (setlocale(3): `LC_ALL`, then
 * `LC_CTYPE`, then `LANG`; locale(7)). Locale names without a UTF-8 codeset count as single-byte.
 */
export const localeIsUtf8 = (env: Readonly<Record<string, string | undefined>>): boolean => {
  const name = [env['LC_ALL'], env['LC_CTYPE'], env['LANG']].find(
    (v) => v !== undefined && v !== '',
  )
  return name !== undefined && /\.utf-?8(@|$)/i.test(name)
}

type Token =
  | { readonly t: 'star' }
  | { readonly t: 'any' }
  | { readonly t: 'lit'; readonly c: number }
  | { readonly t: 'set'; readonly neg: boolean; readonly has: (c: number) => boolean }

const SLASH = 0x2f
const BACKSLASH = 0x5c

const asciiClass: Record<string, (c: number) => boolean> = {
  alnum: (c) => /[0-9A-Za-z]/.test(String.fromCharCode(c)),
  alpha: (c) => /[A-Za-z]/.test(String.fromCharCode(c)),
  blank: (c) => c === 0x20 || c === 0x09,
  cntrl: (c) => c < 0x20 || c === 0x7f,
  digit: (c) => c >= 0x30 && c <= 0x39,
  graph: (c) => c > 0x20 && c < 0x7f,
  lower: (c) => c >= 0x61 && c <= 0x7a,
  print: (c) => c >= 0x20 && c < 0x7f,
  punct: (c) => c > 0x20 && c < 0x7f && !/[0-9A-Za-z]/.test(String.fromCharCode(c)),
  space: (c) => c === 0x20 || (c >= 0x09 && c <= 0x0d),
  upper: (c) => c >= 0x41 && c <= 0x5a,
  xdigit: (c) => /[0-9A-Fa-f]/.test(String.fromCharCode(c)),
}

const unicodeClass: Record<string, RegExp> = {
  alnum: /[\p{Alphabetic}\p{Nd}]/u,
  alpha: /\p{Alphabetic}/u,
  lower: /\p{Lowercase}/u,
  upper: /\p{Uppercase}/u,
  punct: /[\p{P}\p{S}]/u,
  graph: /[^\p{White_Space}\p{Cc}\p{Cs}\p{Cn}]/u,
  print: /[^\p{Cc}\p{Cs}\p{Cn}\u2028\u2029]/u,
  space: /\p{White_Space}/u,
}

/** The test of `[:name:]`, or undefined for an unknown class name. */
const charClass = (name: string, wide: boolean): ((c: number) => boolean) | undefined => {
  const ascii = asciiClass[name]
  if (ascii === undefined) return undefined
  if (!wide) return ascii
  const re = unicodeClass[name]
  return (c) => (c < 0x80 || re === undefined ? ascii(c) : re.test(String.fromCodePoint(c)))
}

/**
 * Tokens of an fnmatch pattern (glibc `posix/fnmatch_loop.c`), or undefined for a pattern that
 * matches nothing (a trailing backslash, an unknown character class).
 */
const tokenize = (p: readonly number[], wide: boolean): Token[] | undefined => {
  const out: Token[] = []
  let i = 0
  while (i < p.length) {
    const c = p[i++] ?? 0
    if (c === 0x2a) out.push({ t: 'star' })
    else if (c === 0x3f) out.push({ t: 'any' })
    else if (c === BACKSLASH) {
      if (i >= p.length) return undefined // "Trailing \ loses."
      out.push({ t: 'lit', c: p[i++] ?? 0 })
    } else if (c === 0x5b) {
      const set = bracket(p, i, wide)
      if (set === null) return undefined
      if (set === undefined) out.push({ t: 'lit', c })
      else {
        out.push(set.token)
        i = set.end
      }
    } else out.push({ t: 'lit', c })
  }
  return out
}

/**
 * The bracket expression starting after the `[` at `start - 1`: its token and the index after
 * its `]`; undefined when unterminated (the `[` is then an ordinary character), null when it
 * makes the pattern match nothing.
 */
const bracket = (
  p: readonly number[],
  start: number,
  wide: boolean,
): { token: Token; end: number } | undefined | null => {
  let i = start
  const neg = p[i] === 0x21 || p[i] === 0x5e // '!' or '^'
  if (neg) i++
  const tests: ((c: number) => boolean)[] = []
  let first = true
  for (;;) {
    if (i >= p.length) return undefined
    let c = p[i++] ?? 0
    if (c === 0x5d && !first) break // ']'
    first = false
    if (c === 0x5b && (p[i] === 0x3a || p[i] === 0x3d || p[i] === 0x2e)) {
      // [:class:], [=c=], [.c.]
      const kind = p[i] ?? 0
      const close = findClose(p, i + 1, kind)
      if (close < 0) return undefined
      const body = p.slice(i + 1, close)
      i = close + 2
      if (kind === 0x3a) {
        const test = charClass(String.fromCharCode(...body), wide)
        if (test === undefined) return null
        tests.push(test)
        continue
      }
      if (body.length !== 1) return null
      c = body[0] ?? 0
    } else if (c === BACKSLASH) {
      if (i >= p.length) return undefined
      c = p[i++] ?? 0
    }
    if (p[i] === 0x2d && i + 1 < p.length && p[i + 1] !== 0x5d) {
      // a range c-hi
      i++
      let hi = p[i++] ?? 0
      if (hi === BACKSLASH) {
        if (i >= p.length) return undefined
        hi = p[i++] ?? 0
      } else if (hi === 0x5b && p[i] === 0x2e) {
        const close = findClose(p, i + 1, 0x2e)
        if (close < 0) return undefined
        const body = p.slice(i + 1, close)
        if (body.length !== 1) return null
        hi = body[0] ?? 0
        i = close + 2
      }
      const lo = c
      tests.push((x) => x >= lo && x <= hi)
    } else {
      const lit = c
      tests.push((x) => x === lit)
    }
  }
  return { token: { t: 'set', neg, has: (x) => tests.some((f) => f(x)) }, end: i }
}

/** Index of `kind` followed by `]` at or after `from`, or -1. */
const findClose = (p: readonly number[], from: number, kind: number): number => {
  for (let j = from; j + 1 < p.length; j++) if (p[j] === kind && p[j + 1] === 0x5d) return j
  return -1
}

const one = (tok: Token, c: number): boolean =>
  tok.t === 'any' || (tok.t === 'lit' ? tok.c === c : tok.t === 'set' && tok.has(c) !== tok.neg)

/** Whether the tokens match all of `s` (every token but `*` takes exactly one unit). */
const fullMatch = (toks: readonly Token[], s: readonly number[], end: number): boolean => {
  let ti = 0
  let si = 0
  let starTi = -1
  let starSi = 0
  while (si < end) {
    const tok = toks[ti]
    if (tok?.t === 'star') {
      starTi = ti++
      starSi = si
    } else if (tok !== undefined && one(tok, s[si] ?? -1)) {
      ti++
      si++
    } else if (starTi >= 0) {
      ti = starTi + 1
      si = ++starSi
    } else return false
  }
  while (toks[ti]?.t === 'star') ti++
  return ti === toks.length
}

/** fnmatch(3) with `FNM_LEADING_DIR` over units, the pattern's tokens given. */
const matchTokens = (toks: readonly Token[] | undefined, s: readonly number[]): boolean => {
  if (toks === undefined) return false
  if (fullMatch(toks, s, s.length)) return true
  for (let k = 0; k < s.length; k++) if (s[k] === SLASH && fullMatch(toks, s, k)) return true
  return false
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** The code points of a byte string that is valid UTF-8, else undefined. */
const codePoints = (bytes: string): number[] | undefined => {
  try {
    return Array.from(utf8.decode(Buffer.from(bytes, 'latin1')), (ch) => ch.codePointAt(0) ?? 0)
  } catch {
    return undefined
  }
}

const units = (bytes: string): number[] => Array.from(bytes, (ch) => ch.charCodeAt(0))

/**
 * A wildcard pattern made ready once for many names: its tokens over bytes and (UTF-8 locale)
 * over code points, and the ASCII literal text it starts with, which every name it matches
 * starts with too (an ASCII character is the same unit as a byte and as a code point, and no
 * other code point's UTF-8 form holds an ASCII byte), so most names are refused by a
 * `startsWith` alone.
 */
interface Fnmatcher {
  readonly prefix: string
  readonly bytes: Token[] | undefined
  readonly wide: Token[] | undefined
  readonly utf8: boolean
}

const compileFnmatch = (pattern: string, o: MatchOptions): Fnmatcher => {
  const lead = /^[^*?[\\\]\x80-\xff]*/.exec(pattern)?.[0] ?? ''
  const wp = o.utf8 ? codePoints(pattern) : undefined
  return {
    prefix: lead,
    bytes: tokenize(units(pattern), false),
    wide: wp === undefined ? undefined : tokenize(wp, true),
    utf8: o.utf8,
  }
}

const runFnmatch = (m: Fnmatcher, name: string): boolean => {
  if (!name.startsWith(m.prefix)) return false
  if (matchTokens(m.bytes, units(name))) return true
  if (!m.utf8 || m.wide === undefined) return false
  const ws = codePoints(name)
  return ws !== undefined && matchTokens(m.wide, ws)
}

/**
 * fnmatch(3) as tar calls it for an exclude pattern with wildcards: no `FNM_PATHNAME`, no
 * `FNM_PERIOD`, with `FNM_LEADING_DIR`. `pattern` and `name` are byte strings.
 */
export const fnmatchLeadingDir = (pattern: string, name: string, o: MatchOptions): boolean =>
  runFnmatch(compileFnmatch(pattern, o), name)

/** gnulib `fnmatch_pattern_has_wildcards` (without `EXCLUDE_REGEX`, `FNM_EXTMATCH`). */
export const hasWildcards = (pattern: string): boolean => {
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]
    if (c === '\\') i++
    else if (c === '*' || c === '?' || c === '[' || c === ']') return true
  }
  return false
}

/** gnulib `unescape_pattern`: drop each backslash that has a character after it. */
const unescape = (pattern: string): string => pattern.replace(/\\([\s\S])/g, '$1')

/** One tar `--exclude` pattern as tar stores it: byte string, anchored or not. */
export interface TarPattern {
  /** The pattern exactly as given to `--exclude=` (for anchored ones, with the `./`). */
  readonly pattern: string
  /** Given after `--anchored`. */
  readonly anchored: boolean
}

/** A tar pattern made ready for many names (see {@link Fnmatcher}). */
type CompiledPattern =
  | { readonly anchored: boolean; readonly fn: Fnmatcher }
  | { readonly anchored: boolean; readonly literal: string }

const compilePattern = (p: TarPattern, o: MatchOptions): CompiledPattern =>
  hasWildcards(p.pattern)
    ? { anchored: p.anchored, fn: compileFnmatch(p.pattern, o) }
    : { anchored: p.anchored, literal: unescape(p.pattern) }

const excludes = (c: CompiledPattern, name: string): boolean => {
  if ('fn' in c) {
    if (runFnmatch(c.fn, name)) return true
    if (c.anchored) return false
    for (let i = 0; i < name.length; i++) {
      if (name[i] === '/' && name[i + 1] !== '/' && runFnmatch(c.fn, name.slice(i + 1))) {
        return true
      }
    }
    return false
  }
  const literal = c.literal
  let f: string | undefined = name
  while (f !== undefined) {
    for (let prefix = f; ;) {
      if (prefix === literal) return true
      const cut = prefix.lastIndexOf('/')
      if (cut < 0) break
      prefix = prefix.slice(0, cut)
    }
    if (c.anchored) break
    const slash = f.indexOf('/')
    f = slash < 0 ? undefined : f.slice(slash + 1)
  }
  return false
}

/** Whether one tar exclude pattern excludes the member name (byte strings). */
export const tarPatternExcludes = (p: TarPattern, name: string, o: MatchOptions): boolean =>
  excludes(compilePattern(p, o), name)

/**
 * The matcher for tar's `--exclude` arguments as {@link tarExcludeArgs} builds them: takes a
 * member name (`.` or `./…`, a byte string) and tells whether tar leaves it out. The patterns
 * are compiled once.
 */
export const tarExcluder = (
  patterns: readonly TarPattern[],
  o: MatchOptions,
): ((name: string) => boolean) => {
  const compiled = patterns.map((p) =>
    compilePattern({ ...p, pattern: toByteString(p.pattern) }, o),
  )
  return (name) => compiled.some((c) => excludes(c, name))
}
