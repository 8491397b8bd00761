/**
 * What the status bar says, and when this page counts its server as stopped.
 *
 * Pure (no JupyterLab imports), so that Jest tests it: the status bar, the
 * panel and the stop watcher all read their answers from here.
 */
import { parseInstant } from './countdown';
import { formatAmount, formatTimeLeft } from './format';
import { ITrans, plainTrans } from './trans';
import { ICreditsSession, ICreditsStatus } from './types';

/** The last seconds of paid time shown in the warning style (10 min). */
export const WARNING_SECONDS = 600;

/** `data-state` of the status bar item (issue 9 contract, section 3). */
export type StatusState = 'ok' | 'warning' | 'none' | 'unavailable' | 'stopped';

/** What the page knows of its server's stop (see `CreditsModel.stopped`). */
export interface IServerStopped {
  /** An `end_reason` ("expired", "admin", …), or null when none is known. */
  reason: string | null;
  /** The service's or server's own words, if any. */
  message: string | null;
  /** When it stopped (server clock, ISO 8601), if known. */
  at: string | null;
  /** The session that was open when it stopped, if one was (to tell a later one apart). */
  session: ICreditsSession | null;
}

export interface IStatusInput {
  status: ICreditsStatus | null;
  /** Seconds left by the local countdown; null without a `paid_until`. */
  secondsLeft: number | null;
  /** Set once the server stopped: then no countdown is shown. */
  stopped: IServerStopped | null;
}

/**
 * The status bar item: "Server stopped" once the server stopped (whatever the
 * last status said: its countdown belongs to a session that is over), else
 * the balance and the time left.
 */
export function describeStatus(
  input: IStatusInput,
  trans: ITrans = plainTrans
): { state: StatusState; text: string } {
  if (input.stopped) {
    return { state: 'stopped', text: trans.__('Server stopped') };
  }
  const status = input.status;
  if (!status || !status.available || !status.balance) {
    return { state: 'unavailable', text: trans.__('Credits unavailable') };
  }
  const amount = formatAmount(status.balance.available, trans);
  if (!status.session) {
    return { state: 'none', text: amount };
  }
  const left = input.secondsLeft;
  if (left === null) {
    return { state: 'ok', text: trans.__('%1 · starting', amount) };
  }
  return {
    state: left <= WARNING_SECONDS ? 'warning' : 'ok',
    text: trans.__('%1 · %2', amount, formatTimeLeft(left, trans))
  };
}

/** What the stop watcher knows at one moment. */
export interface IStopKnowledge {
  /** The server-stopping event arrived (the server got SIGTERM/SIGINT). */
  eventArrived: boolean;
  /** The stop dialog was shown. */
  dialogShown: boolean;
  /** The latest status carries a `stop` about this page's session (not an older one's). */
  freshStop: boolean;
  /** The latest status has an open session. */
  sessionOpen: boolean;
  /** The local countdown reached 0 for the paid time still in the status. */
  countdownRanOut: boolean;
  /** The latest poll failed as when the server is gone (network error, 424, 502, 503). */
  serverGone: boolean;
}

/**
 * Whether the server has stopped, as far as this page can tell: it said so
 * (the event), the dialog already said so, or the service ended its session
 * (a fresh `stop` and no open session), or a stop was known or due and the
 * server stopped answering. A failing poll alone (a network blip) is not a
 * stop, nor is a countdown at 0 while the server still answers (the meter may
 * have extended it automatically).
 */
export function serverStopped(known: IStopKnowledge): boolean {
  if (known.eventArrived || known.dialogShown) {
    return true;
  }
  if (known.freshStop && !known.sessionOpen) {
    return true;
  }
  return known.serverGone && (known.freshStop || known.countdownRanOut);
}

/**
 * Whether `session` (of a newer status) is another session than the one that
 * was open at the stop: the server was started again, and this page shows it
 * as it would any server. The same session seen again (a cached status served
 * during the server's grace seconds) is not.
 */
export function isLaterSession(
  stopped: IServerStopped,
  session: ICreditsSession | null | undefined
): boolean {
  if (!session || session.state === 'ended') {
    return false;
  }
  const before = stopped.session;
  if (!before) {
    // Stopped with no session known: only a session begun after the stop is a new one.
    const at = parseInstant(stopped.at);
    const began = parseInstant(session.requested_at ?? session.ready_at);
    return at !== null && began !== null && began > at;
  }
  if (before.id !== undefined && session.id !== undefined) {
    return before.id !== session.id;
  }
  return (
    (before.requested_at ?? before.ready_at ?? null) !==
    (session.requested_at ?? session.ready_at ?? null)
  );
}
