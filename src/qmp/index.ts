/** QMP client: wire codec, typed command map and the connection. */
export { QmpClient } from './client.ts'
export type { QmpClientState, QmpConnectOptions, QmpExecuteRest } from './client.ts'
export type * from './commands.ts'
export type { QmpCallOptions } from './deadline.ts'
export type {
  QmpBlockJobEventData,
  QmpEventName,
  QmpEventRecord,
  QmpEvents,
  QmpSubscribeOptions,
  QmpTypedEvent,
  QmpWaitOptions,
} from './events.ts'
export { encodeCommand, parseMessage, QMP_MAX_LINE, QmpLineSplitter } from './wire.ts'
export type {
  QmpErrorMessage,
  QmpEventMessage,
  QmpGreetingMessage,
  QmpId,
  QmpMessage,
  QmpRequest,
  QmpReturnMessage,
  QmpTimestamp,
  QmpVersionTriple,
} from './wire.ts'
