import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { CleanupStack, isSuppressedError, mainError } from '../../src/io/cleanup.ts'

const step =
  (order: string[], name: string, fail = false) =>
  (): Promise<void> => {
    order.push(name)
    return fail ? Promise.reject(new Error(`${name} failed`)) : Promise.resolve()
  }

/** Run `body` in a block that disposes `stack` with `await using`, as src/host does. */
const block = async (stack: CleanupStack, body: () => Promise<void>): Promise<void> => {
  await using _stack = stack
  await body()
}

describe('io/cleanup', () => {
  it('runs the steps last added first, once', async () => {
    const order: string[] = []
    const stack = new CleanupStack()
    stack.defer(step(order, 'a'))
    stack.use({ [Symbol.asyncDispose]: step(order, 'b') })
    const none = (): AsyncDisposable | undefined => undefined
    assert.equal(stack.use(none()), undefined)
    await block(stack, () => Promise.resolve())
    await stack[Symbol.asyncDispose]()
    assert.deepEqual(order, ['b', 'a'])
    assert.throws(() => {
      stack.defer(step(order, 'late'))
    }, TypeError)
  })

  it('runs every step when one fails and throws that failure', async () => {
    const order: string[] = []
    const stack = new CleanupStack()
    stack.defer(step(order, 'a'))
    stack.defer(step(order, 'b', true))
    stack.defer(step(order, 'c'))
    await assert.rejects(
      block(stack, () => Promise.resolve()),
      (e: unknown) => e instanceof Error && e.message === 'b failed',
    )
    assert.deepEqual(order, ['c', 'b', 'a'])
  })

  it('the error of the work wins over clean-up errors, which are handed out', async () => {
    const order: string[] = []
    const stack = new CleanupStack()
    stack.defer(step(order, 'a', true))
    stack.defer(step(order, 'b', true))
    const work = new Error('work failed')
    const thrown = await block(stack, () => Promise.reject(work)).then(
      () => assert.fail('resolved'),
      (e: unknown) => e,
    )
    assert.equal(isSuppressedError(thrown), true)
    const lost: string[] = []
    const main = mainError(thrown, (c) => lost.push((c as Error).message))
    assert.equal(main, work)
    assert.deepEqual(lost, ['a failed', 'b failed'])
    assert.deepEqual(order, ['b', 'a'])
  })

  it('without a failure of the work the first clean-up error is the main one', async () => {
    const order: string[] = []
    const stack = new CleanupStack()
    stack.defer(step(order, 'a', true))
    stack.defer(step(order, 'b', true))
    const thrown = await block(stack, () => Promise.resolve()).then(
      () => assert.fail('resolved'),
      (e: unknown) => e,
    )
    const lost: unknown[] = []
    const main = mainError(thrown, (c) => lost.push(c))
    assert.equal((main as Error).message, 'b failed')
    assert.deepEqual(
      lost.map((c) => (c as Error).message),
      ['a failed'],
    )
  })

  it('move() hands the steps to a new stack', async () => {
    const order: string[] = []
    const stack = new CleanupStack()
    stack.defer(step(order, 'a'))
    const moved = stack.move()
    await block(stack, () => Promise.resolve())
    assert.deepEqual(order, [])
    await moved[Symbol.asyncDispose]()
    assert.deepEqual(order, ['a'])
  })

  it('leaves plain errors alone', () => {
    const e = new Error('x')
    assert.equal(
      mainError(e, () => assert.fail('no clean-up error')),
      e,
    )
  })
})
