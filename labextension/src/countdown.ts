/**
 * The countdown to `paid_until`, run on the browser's clock.
 *
 * The browser's clock may be off by minutes; the server's (`now` in every
 * status) is the one the meter stops by. Each status answer gives an offset
 * (server minus browser), and the countdown reads "now" as browser time plus
 * that offset, so it ends when the meter's clock says paid time is over.
 */

/** Milliseconds since the epoch of an ISO 8601 instant, or null when unreadable. */
export function parseInstant(iso: string | null | undefined): number | null {
  if (!iso) {
    return null;
  }
  // Python writes microseconds ("…:05.123456+00:00"); keep milliseconds, which
  // every browser's Date parses.
  const text = iso.replace(/(\.\d{3})\d+/, '$1');
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? null : ms;
}

/**
 * Server clock minus browser clock, in ms, from one request: `serverNow` was
 * read somewhere between sending (`sentAt`) and receiving (`receivedAt`); the
 * midpoint is the best guess, off by at most half the round trip.
 */
export function clockOffset(
  serverNow: string | null | undefined,
  sentAt: number,
  receivedAt: number
): number {
  const server = parseInstant(serverNow);
  if (server === null) {
    return 0;
  }
  return server - (sentAt + receivedAt) / 2;
}

/**
 * Servers write `now` to the second, so each measured offset is off by up to a
 * second (plus half the round trip): a new measurement replaces the offset in
 * use only when it differs by more than this, or the countdown would jump back
 * and forth by a second at every poll.
 */
export const OFFSET_TOLERANCE = 1500;

/** The offset to use after `measured`, given the one in use (null before the first). */
export function nextOffset(previous: number | null, measured: number): number {
  return previous === null || Math.abs(measured - previous) > OFFSET_TOLERANCE
    ? measured
    : previous;
}

/**
 * Whole seconds from `browserNow` (+ `offset`) to `paidUntil`, rounded down
 * (never promise time that is not there), 0 once it has passed; null without
 * a `paidUntil` (no session, or one not started yet).
 */
export function secondsLeft(
  paidUntil: string | null | undefined,
  browserNow: number,
  offset: number
): number | null {
  const end = parseInstant(paidUntil);
  if (end === null) {
    return null;
  }
  return Math.max(0, Math.floor((end - (browserNow + offset)) / 1000));
}

/**
 * How much of the paid time is used, 0…1, for the progress bar: from
 * `ready_at` (when paying started) to `paid_until`; null when either is missing.
 */
export function paidFraction(
  readyAt: string | null | undefined,
  paidUntil: string | null | undefined,
  browserNow: number,
  offset: number
): number | null {
  const start = parseInstant(readyAt);
  const end = parseInstant(paidUntil);
  if (start === null || end === null || end <= start) {
    return null;
  }
  const now = browserNow + offset;
  return Math.min(1, Math.max(0, (now - start) / (end - start)));
}
