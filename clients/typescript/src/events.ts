// `Client.watchAll`: tokend's durable event feed (WatchConnections) as an
// async iterator that hides checkpoints, keeps the cursor to persist, and
// resumes after it when it reconnects, so a broker restart loses and repeats
// nothing.

import type * as grpc from "@grpc/grpc-js";

import * as pb from "./gen/tokend/v1/tokend.js";
import { ResilientStream } from "./stream.js";
import { type ConnectionEvent, type ConnectionStatus, type EventType, enumValue, eventFromPb } from "./types.js";

export interface WatchAllOptions {
  /** Provider names, e.g. "hubspot". */
  providers?: string[];
  /** Connection ids starting with any of these. */
  connectionIdPrefixes?: string[];
  /** Event types, e.g. "RECONNECT_REQUIRED" (any case). */
  eventTypes?: (EventType | Lowercase<EventType>)[];
  /** The connection's status after the event: "ACTIVE" or "RECONNECT_REQUIRED" (any case). */
  statuses?: (ConnectionStatus | Lowercase<ConnectionStatus>)[];
  /** A persisted `EventStream.cursor`: replay what came after it, then go on live. */
  resumeAfter?: string;
  /** Without resumeAfter: start at the oldest retained event instead of live. */
  fromOldest?: boolean;
}

/** @internal The request for `options`; throws a RangeError for an unknown event type or status name. */
export function watchAllRequest(options: WatchAllOptions): pb.WatchConnectionsRequest {
  return {
    filter: {
      providers: options.providers ?? [],
      connectionIdPrefixes: options.connectionIdPrefixes ?? [],
      eventTypes: (options.eventTypes ?? []).map((t) =>
        enumValue<pb.EventType>(t, pb.EventType, "EVENT_TYPE_", "event type"),
      ),
      statuses: (options.statuses ?? []).map((s) =>
        enumValue<pb.ConnectionStatus>(s, pb.ConnectionStatus, "CONNECTION_STATUS_", "status"),
      ),
    },
    resumeAfter: options.resumeAfter ?? "",
    fromOldest: options.fromOldest ?? false,
  };
}

/**
 * The stream of `Client.watchAll`: an async iterable of ConnectionEvents.
 *
 * Checkpoints are not yielded; like events they move `cursor`, the cursor of
 * the last message received, which is what to persist and pass back as
 * `resumeAfter`. When the broker goes away (a restart) the stream reconnects
 * by itself with exponential backoff and resumes after `cursor`, so no event
 * is lost or repeated. Any other error is thrown as a TokendError
 * (`CursorExpired` for a cursor past the log's retention) and ends the
 * stream. `close()` (or leaving a for-await loop, or closing the Client)
 * cancels the call and ends the iteration.
 */
export class EventStream extends ResilientStream<pb.ConnectionEvent, ConnectionEvent> {
  private lastCursor?: string;
  private caughtUpSeen = false;

  /** @internal Use Client.watchAll. */
  constructor(
    private readonly openCall: (request: pb.WatchConnectionsRequest) => grpc.ClientReadableStream<pb.ConnectionEvent>,
    private readonly request: pb.WatchConnectionsRequest,
    private readonly onEvent: (event: ConnectionEvent) => void,
    private readonly onClose: (stream: EventStream) => void,
  ) {
    super();
    this.start();
  }

  /** The cursor of the last message received (event or checkpoint); undefined before the first. */
  get cursor(): string | undefined {
    return this.lastCursor;
  }

  /** Whether the replay of a resumed (or from-oldest) stream is over: every event the log held when it opened came. */
  get caughtUp(): boolean {
    return this.caughtUpSeen;
  }

  protected override open(): grpc.ClientReadableStream<pb.ConnectionEvent> {
    return this.openCall({ ...this.request, resumeAfter: this.lastCursor ?? this.request.resumeAfter });
  }

  protected override accept(m: pb.ConnectionEvent): ConnectionEvent | undefined {
    if (m.cursor) this.lastCursor = m.cursor;
    if (m.eventType === pb.EventType.EVENT_TYPE_CHECKPOINT) {
      if (m.caughtUp) this.caughtUpSeen = true;
      return undefined;
    }
    const event = eventFromPb(m);
    this.onEvent(event);
    return event;
  }

  protected override onClosed(): void {
    this.onClose(this);
  }
}
