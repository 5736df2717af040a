// `Client.watch`: one connection's state (WatchConnection) as an async
// iterator. The current state first (SNAPSHOT), then every change; when the
// broker restarts it subscribes again with backoff and yields a fresh
// SNAPSHOT. It ends after DELETED, on close(), or by throwing the error that
// made subscribing again pointless (NotFound, PermissionDenied, ...).

import type * as grpc from "@grpc/grpc-js";

import type * as pb from "./gen/tokend/v1/tokend.js";
import { ResilientStream } from "./stream.js";
import { type WatchEvent, watchEventFromPb } from "./types.js";

export class WatchStream extends ResilientStream<pb.WatchConnectionResponse, WatchEvent> {
  /** @internal Use Client.watch. */
  constructor(
    readonly connectionId: string,
    private readonly openCall: () => grpc.ClientReadableStream<pb.WatchConnectionResponse>,
    private readonly onEvent: (event: WatchEvent) => void,
    private readonly onClose: (stream: WatchStream) => void,
  ) {
    super();
    this.start();
  }

  protected override open(): grpc.ClientReadableStream<pb.WatchConnectionResponse> {
    return this.openCall();
  }

  protected override accept(m: pb.WatchConnectionResponse): WatchEvent | undefined {
    const event = watchEventFromPb(m);
    if (event) this.onEvent(event);
    return event;
  }

  protected override isFinal(event: WatchEvent): boolean {
    return event.kind === "DELETED";
  }

  protected override onClosed(): void {
    this.onClose(this);
  }
}
