import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { parseMountInfo, readMounts } from '../../src/archive/mountinfo.ts'

describe('mountinfo', () => {
  it('parses lines and unescapes mount points', () => {
    const text = [
      '27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard',
      '42 27 0:39 / /tmp/a\\040b\\011c\\134d rw,nosuid shared:5 - fuse.squashfuse_ll squashfuse_ll rw',
      'garbage line',
      '',
    ].join('\n')
    assert.deepEqual(parseMountInfo(text), [
      { id: 27, mountPoint: '/', fsType: 'ext4', source: '/dev/vda' },
      {
        id: 42,
        mountPoint: '/tmp/a b\tc\\d',
        fsType: 'fuse.squashfuse_ll',
        source: 'squashfuse_ll',
      },
    ])
  })

  it('reads this process’s mounts', async () => {
    const mounts = await readMounts()
    assert.ok(mounts.some((m) => m.mountPoint === '/'))
    assert.ok(mounts.some((m) => m.fsType === 'proc'))
  })
})
