/**
 * Which warning fires when, decided on the local countdown.
 *
 * The service sends `warning_thresholds` (seconds before `paid_until`, e.g.
 * [600, 60]). Each threshold fires once per `paid_until`: an extension moves
 * `paid_until` and re-arms them all. When several are crossed at once (the page
 * opened late, the tab slept), only the most urgent is shown: two toasts
 * saying "10 min left" and "1 min left" together would be noise. Reaching the
 * smallest threshold is when open documents get saved, before the stop.
 */

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
