/**
 * Which warning fires when, decided on the local countdown.
 *
 * The service sends `warning_thresholds` (seconds before `paid_until`, e.g.
 * [600, 60]). Each threshold fires once per `paid_until`: an extension moves
 * `paid_until` and re-arms them all. When several are crossed at once (the page
 * opened late, the tab slept), only the most urgent is shown: two toasts
 * saying "10 min left" and "1 min left" together would be noise. Reaching the
 * smallest threshold is when open documents get saved, before the stop.
 *
 * The toasts raised offer "Extend" and tell a time left: both go stale when
 * the server stops or the paid time moves. `staleWarnings` decides which to
 * dismiss then, and which to keep, without their action, for what they say
 * about saving.
 */
import { parseInstant } from './countdown';

/**
 * A tick may come a second or two late (a busy or hidden tab, a new clock
 * offset): a countdown this close below a threshold is said as the threshold.
 */
export const CROSSING_SLACK = 2;

export interface IWarning {
  /** The threshold crossed, in seconds before `paid_until`. */
  threshold: number;
  /** The time left to tell: the threshold when just crossed, else the countdown. */
  secondsLeft: number;
  /** Whether it is the smallest threshold: time to save every open document. */
  save: boolean;
}

export class WarningTracker {
  /**
   * Feed the countdown (every tick and every status); returns the warning to
   * show now, or null.
   */
  update(
    paidUntil: string | null | undefined,
    secondsLeft: number | null,
    thresholds: readonly number[]
  ): IWarning | null {
    if (!paidUntil || secondsLeft === null) {
      return null;
    }
    if (paidUntil !== this._paidUntil) {
      this._paidUntil = paidUntil;
      this._fired = new Set();
    }
    const valid = thresholds.filter(t => Number.isFinite(t) && t > 0);
    if (valid.length === 0) {
      return null;
    }
    const crossed = valid.filter(t => secondsLeft <= t && !this._fired.has(t));
    if (crossed.length === 0) {
      return null;
    }
    crossed.forEach(t => this._fired.add(t));
    const threshold = Math.min(...crossed);
    return {
      threshold,
      secondsLeft: secondsLeft >= threshold - CROSSING_SLACK ? threshold : secondsLeft,
      save: threshold === Math.min(...valid)
    };
  }

  private _paidUntil: string | null = null;
  private _fired = new Set<number>();
}

/** A warning notification this page raised and still shows as it was raised. */
export interface IRaisedWarning {
  /** The notification's id (`Notification.warning`'s answer). */
  id: string;
  /** The `paid_until` it counted down to. */
  paidUntil: string;
  /**
   * What it says about saving ("Saved 1 document."…), when it saved or failed
   * to save something; null for a plain time-left warning, or a save that
   * found nothing to save.
   */
  savedWords: string | null;
  /** Whether some document could not be saved. */
  saveFailed: boolean;
}

/** What to do with the raised warnings now (each id in at most one list). */
export interface IStaleWarnings {
  /** Dismiss these: the time left and the "Extend" action they offer are past. */
  dismiss: string[];
  /** Show only their `savedWords`, without "Extend": the server stopped. */
  keepSaved: IRaisedWarning[];
}

/**
 * Which of `raised` are stale for the model's state now.
 *
 * - Once the server stopped, every one is: the time-left warnings are
 *   dismissed, but one that saved documents (or failed to) stays, saying only
 *   that, next to the stop dialog (which says the same in its own words).
 * - While it runs, a warning about another `paid_until` than the session's is
 *   stale (extended: the warnings re-arm for the new time) and is dismissed,
 *   a saving one too: its documents were saved, nothing is ending now. With
 *   no `paid_until` known (no session in the status yet), nothing is decided.
 */
export function staleWarnings(
  raised: readonly IRaisedWarning[],
  now: { stopped: boolean; paidUntil: string | null | undefined }
): IStaleWarnings {
  const result: IStaleWarnings = { dismiss: [], keepSaved: [] };
  for (const warning of raised) {
    if (now.stopped) {
      if (warning.savedWords) {
        result.keepSaved.push(warning);
      } else {
        result.dismiss.push(warning.id);
      }
    } else if (now.paidUntil && !sameInstant(now.paidUntil, warning.paidUntil)) {
      result.dismiss.push(warning.id);
    }
  }
  return result;
}

/** Whether two ISO instants are the same (as text when one does not parse). */
function sameInstant(a: string, b: string): boolean {
  const x = parseInstant(a);
  const y = parseInstant(b);
  return x !== null && y !== null ? x === y : a === b;
}
