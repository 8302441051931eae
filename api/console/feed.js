// The agent's live feed: GET /v1/feed as Server-Sent Events, read with fetch() so the
// bearer token goes in a header (EventSource cannot send one). The server forwards
// only what the broker's access rule lets this agent subscribe to.
//
// Nothing is missed and nothing shown twice: after every (re)connect the server says
// `ready` once its subscription is live, and only then does the app re-read what it
// shows from the REST cursor; everything is merged by id, so an event seen both ways
// counts once.

import { token } from "./api.js";

const SILENCE_MS = 40_000;

export function connect({ onReady, onEvent, onState }) {
  let stopped = false;
  let controller = null;
  let delay = 500;

  async function once() {
    controller = new AbortController();
    const resp = await fetch("/v1/feed", {
      headers: { Authorization: "Bearer " + (await token()), Accept: "text/event-stream" },
      signal: controller.signal,
      cache: "no-store",
    });
    if (!resp.ok || !resp.body) throw new Error("feed answered " + resp.status);
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    // The server pings every 15 s: silence for longer means a dead connection that
    // never said so (a cut network), so give it up and reconnect.
    let watchdog = setTimeout(() => controller.abort(), SILENCE_MS);
    for (;;) {
      const { value, done } = await reader.read().finally(() => clearTimeout(watchdog));
      if (done) return;
      watchdog = setTimeout(() => controller.abort(), SILENCE_MS);
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        dispatch(frame);
      }
    }
  }

  function dispatch(frame) {
    let event = "message";
    const data = [];
    for (const line of frame.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (event === "ready") {
      delay = 500;
      onState("live");
      onReady();
    } else if (event === "mqtt" && data.length) {
      try {
        onEvent(JSON.parse(data.join("\n")));
      } catch {
        /* a frame we cannot read: the next gap fill covers it */
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
      } catch {
        /* cut, refused or aborted: reconnect below */
      }
      if (stopped) return;
      onState("reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 4000);
    }
  })();

  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}
