/**
 * The text records of `getfacl` (acl 2.3, getfacl(1), "ACL TEXT FORMS" in acl(5)) read and
 * checked as untrusted input: a record is `# file: NAME`, optional `# owner:`, `# group:` and
 * `# flags:` comments, one ACL entry per line, and a blank line. getfacl quotes a name's
 * backslash, newline and carriage return as `\ooo` (acl `libmisc/quote.c`, called from
 * `tools/getfacl.c` with `"\\\n\r"`), so every record line is one line of text; other bytes
 * are written as they are. Lines are handled as latin1 strings, which keep each byte. Pure:
 * no I/O.
 */
import { BackupError } from '../errors.ts'

/** One record: the name as getfacl wrote it (quoted) and its ACL entries. */
export interface AclRecord {
  /** The `# file:` name, still quoted (latin1: one character per byte). */
  quoted: string
  /** The name's bytes, relative to the walked directory (`.` for the directory itself). */
  path: Buffer
  /** The record's lines as read, the `# file:` line first. */
  lines: string[]
  /** The ACL entries only (`user::rw-`, `default:group:33:r-x`), without `#effective:` notes. */
  entries: string[]
}

/** An ACL entry as `getfacl -n` writes it (numeric qualifiers), with an optional note. */
const ENTRY =
  /^((?:default:)?(?:user|group|mask|other):\d*:[r-][w-][x-])(?:\t+#effective:[r-][w-][x-])?$/

const FILE = '# file: '

/** `\ooo` escapes back to their bytes (the inverse of getfacl's quoting). */
export const unquoteName = (quoted: string): Buffer =>
  Buffer.from(
    quoted.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8) & 0xff)),
    'latin1',
  )

/** Reads records from lines (in order); one instance per record file. */
export class AclRecordParser {
  readonly #label: string
  #current: AclRecord | undefined
  #line = 0

  /** `label` names the record file in errors. */
  constructor(label: string) {
    this.#label = label
  }

  #invalid(why: string): BackupError {
    return new BackupError(
      'ARCHIVE_INVALID',
      `ACL record ${this.#label}: line ${this.#line}: ${why}`,
    )
  }

  /** Feed one line (without its newline); returns the record it completes, if any. */
  line(raw: string): AclRecord | undefined {
    this.#line++
    if (raw === '') {
      const done = this.#current
      this.#current = undefined
      return done
    }
    if (this.#current === undefined) {
      if (!raw.startsWith(FILE)) throw this.#invalid('a record does not start with "# file:"')
      const quoted = raw.slice(FILE.length)
      this.#current = { quoted, path: unquoteName(quoted), lines: [raw], entries: [] }
      return undefined
    }
    const m = ENTRY.exec(raw)
    if (m?.[1] !== undefined) this.#current.entries.push(m[1])
    else if (!/^# (owner|group|flags): /.test(raw)) {
      throw this.#invalid(`not an ACL entry: ${JSON.stringify(raw.slice(0, 100))}`)
    }
    this.#current.lines.push(raw)
    return undefined
  }

  /** The input ended: the last record, if it had no blank line after it. */
  end(): AclRecord | undefined {
    const done = this.#current
    this.#current = undefined
    return done
  }
}

/**
 * The components of a record's name, refused (`ARCHIVE_INVALID`) when it could reach outside
 * the directory it is applied in: absolute, empty, a `.` or `..` component, an empty component.
 * `.` alone is the directory itself (no components).
 */
export const nameComponents = (path: Buffer, label: string): Buffer[] => {
  const text = path.toString('latin1')
  const refuse = (why: string): BackupError =>
    new BackupError('ARCHIVE_INVALID', `ACL record ${label}: ${JSON.stringify(text)} ${why}`, {
      details: { name: text },
    })
  if (text === '.') return []
  if (text === '') throw refuse('is an empty name')
  if (text.startsWith('/')) throw refuse('is an absolute name')
  if (text.includes('\0')) throw refuse('contains NUL')
  const parts = text.split('/')
  if (parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw refuse('has an empty, . or .. component')
  }
  return parts.map((p) => Buffer.from(p, 'latin1'))
}

/** The `# flags:` comment of `mode`: setuid, setgid, sticky as getfacl writes them (`s-t`). */
export const flagsOf = (mode: number): string =>
  (mode & 0o4000 ? 's' : '-') + (mode & 0o2000 ? 's' : '-') + (mode & 0o1000 ? 't' : '-')

/**
 * The record as setfacl gets it on restore: the name, `# flags:` of the file's current `mode`
 * and the entries. `setfacl --restore` chowns to the `# owner:` and `# group:` comments (which
 * clears setuid bits and file capabilities) and sets the special bits to `# flags:`, clearing
 * them when there is none (acl `tools/setfacl.c`, `restore()`): the archive restored owners
 * and modes already, so owners are left out and the flags are the file's own.
 */
export const restoreText = (r: AclRecord, mode: number): string =>
  `${FILE}${r.quoted}\n# flags: ${flagsOf(mode)}\n${r.entries.map((e) => `${e}\n`).join('')}\n`
