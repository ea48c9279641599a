/**
 * The check of a squashfs image's listing before `unsquashfs` extracts it: the lines of
 * `unsquashfs -lln` (squashfs-tools 4.5.1, `-lln[umeric]`: like `ls -l`, numeric owners), read
 * as latin1 so that every name keeps its bytes. Pure: no I/O, memory bounded by the depth of
 * the tree.
 *
 * unsquashfs walks the tree depth first, each directory's entries in the order they are stored,
 * which mksquashfs sorts by `strcmp` (squashfs-tools `unsquash-1234.c`, `check_directory()`,
 * refuses a directory that has duplicate names or is unsorted; `check_name()` refuses names
 * that are `.`, `..` or contain `/`). So in a sound listing every member's parent is the
 * directory last listed on its path, and the names inside a directory strictly increase. The
 * check requires exactly that, which the tar path gets from tar's own rules (tar-check.ts,
 * tar-extract.ts): no absolute name, no `..`, no member through a symbolic link (a member can
 * only follow a directory of its name, never a symlink or a second entry of that name).
 */
import { BackupError } from '../errors.ts'

/** Longer lines are not checked (the listing cannot be verified). */
export const MAX_LISTING_LINE = 64 * 1024

/** The root's name in the listing: unsquashfs' default destination. */
export const LISTING_ROOT = 'squashfs-root'
const ROOT = LISTING_ROOT

/**
 * One `-lln` line: type, permissions, `uid/gid`, size (or `major, minor`), date, time, path
 * (for a symlink `path -> target`). See `unsquashfs.c`, `print_filename()`.
 */
export const LISTING_LINE =
  /^([-dlcbps])[-rwxsStT]{9} \d+\/\d+ +(?:(\d+)|\d+, *\d+) \d+-\d\d-\d\d \d\d:\d\d (.*)$/

/** A directory on the current path: its path below the root and its last entry's name. */
interface Dir {
  path: string
  last: string | undefined
}

/** Result of {@link SquashfsListingCheck.end}. */
export interface SquashfsListingResult {
  /** Members listed, the root included. */
  members: number
  /** Bytes of the regular files listed (their sizes, holes included). */
  bytes: number
  /**
   * Set when a line could not be read unambiguously (a name or symlink target with a newline
   * or a second ` -> `, an over-long line): the first such line. The listing then says nothing
   * about the rest of the image, which must be extracted another way.
   */
  unverifiable?: string
  /**
   * The sockets listed (paths below the root, latin1: one character per byte). unsquashfs
   * creates them; tar, Proxmox's archiver, skips them ("socket ignored"), so the restore
   * removes them again.
   */
  sockets: string[]
}

/** See the module comment. One instance per listing; feed it every line, then call `end`. */
export class SquashfsListingCheck {
  readonly #archive: string
  readonly #stack: Dir[] = []
  #members = 0
  #bytes = 0
  #unverifiable: string | undefined
  readonly #sockets: string[] = []

  /** `archive` names the image in errors. */
  constructor(archive: string) {
    this.#archive = archive
  }

  #refuse(path: string, why: string): BackupError {
    return new BackupError('ARCHIVE_INVALID', `squashfs image ${this.#archive}: ${why}`, {
      details: { archive: this.#archive, member: path },
    })
  }

  /**
   * Check the next line. Throws `ARCHIVE_INVALID` for a member the restore refuses; an
   * unreadable line only marks the listing unverifiable (see {@link SquashfsListingResult}).
   */
  line(raw: string): void {
    if (this.#unverifiable !== undefined) return
    const m = raw.length > MAX_LISTING_LINE ? null : LISTING_LINE.exec(raw)
    if (m === null) {
      this.#unverifiable = raw.slice(0, 200)
      return
    }
    const type = m[1] ?? ''
    let path = m[3] ?? ''
    if (type === 'l') {
      const arrow = path.indexOf(' -> ')
      if (arrow < 0 || path.includes(' -> ', arrow + 4)) {
        this.#unverifiable = raw.slice(0, 200)
        return
      }
      path = path.slice(0, arrow)
    }
    this.#members++
    if (type === '-') this.#bytes += Number(m[2] ?? 0)
    if (this.#members === 1) {
      if (path !== ROOT || type !== 'd') throw this.#refuse(path, 'the listing has no root')
      this.#stack.push({ path: '', last: undefined })
      return
    }
    if (!path.startsWith(`${ROOT}/`)) throw this.#refuse(path, `stray member ${path}`)
    const rel = path.slice(ROOT.length + 1)
    const parts = rel.split('/')
    if (parts.some((p) => p === '' || p === '.' || p === '..')) {
      throw this.#refuse(rel, `member ${JSON.stringify(rel)} has an empty, . or .. component`)
    }
    const name = parts.pop() ?? ''
    const parent = parts.join('/')
    while (this.#stack.length > 0 && this.#stack.at(-1)?.path !== parent) this.#stack.pop()
    const dir = this.#stack.at(-1)
    if (dir === undefined) {
      throw this.#refuse(
        rel,
        `member ${rel} does not follow its directory (a symlink or a duplicate)`,
      )
    }
    if (dir.last !== undefined && name <= dir.last) {
      throw this.#refuse(rel, `member ${rel} is a duplicate or out of order`)
    }
    dir.last = name
    if (type === 's') this.#sockets.push(rel)
    if (type === 'd') this.#stack.push({ path: rel, last: undefined })
  }

  /** The listing ended: `ARCHIVE_INVALID` if it had no root. */
  end(): SquashfsListingResult {
    if (this.#unverifiable !== undefined) {
      return {
        members: this.#members,
        bytes: this.#bytes,
        unverifiable: this.#unverifiable,
        sockets: this.#sockets,
      }
    }
    if (this.#members === 0) throw this.#refuse('', 'the listing is empty')
    return { members: this.#members, bytes: this.#bytes, sockets: this.#sockets }
  }
}
