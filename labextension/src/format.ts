/**
 * How amounts and durations read in the status bar and the panel.
 *
 * Amounts arrive as the service writes them, decimal strings ("112.50"): they
 * are shown as they are, never turned into floats.
 */
import { ITrans, plainTrans } from './trans';

/** "112.50" → "112.50 cr"; a missing amount → "—". */
export function formatAmount(
  amount: string | null | undefined,
  trans: ITrans = plainTrans
): string {
  if (amount === null || amount === undefined || amount === '') {
    return '—';
  }
  return trans.__('%1 cr', amount);
}

function twoDigits(value: number): string {
  return value < 10 ? `0${value}` : String(value);
}

/**
 * A duration in whole seconds, as precise as it matters:
 * "2 h 13 min" (an hour or more), "45 min" (10 min or more),
 * "4 min 05 s" (under 10 min), "45 s" (under a minute), "0 s".
 *
 * Rounded down: a countdown must not promise time that is not there.
 */
export function formatDuration(
  seconds: number,
  trans: ITrans = plainTrans
): string {
  return wholeSeconds(Number.isFinite(seconds) ? Math.max(0, Math.floor(seconds)) : 0, trans);
}

/**
 * How long something took (a training run): as `formatDuration`, but rounded
 * to the nearest second, as the service words it ("run too short: 1 s"), and
 * "<1 s" under half a second rather than a "0 s" that reads as nothing.
 */
export function formatElapsed(
  seconds: number,
  trans: ITrans = plainTrans
): string {
  if (!Number.isFinite(seconds) || seconds < 0) {
    return '—';
  }
  if (seconds < 0.5) {
    return trans.__('<1 s');
  }
  return wholeSeconds(Math.round(seconds), trans);
}

function wholeSeconds(total: number, trans: ITrans): string {
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const secs = total % 60;
  if (hours > 0) {
    return minutes > 0
      ? trans.__('%1 h %2 min', hours, minutes)
      : trans.__('%1 h', hours);
  }
  if (total >= 600) {
    return trans.__('%1 min', minutes);
  }
  if (minutes > 0) {
    return trans.__('%1 min %2 s', minutes, twoDigits(secs));
  }
  return trans.__('%1 s', secs);
}

/** "2 h 13 min left", "4 min 05 s left", "0 s left". */
export function formatTimeLeft(
  seconds: number,
  trans: ITrans = plainTrans
): string {
  return trans.__('%1 left', formatDuration(seconds, trans));
}

/**
 * A moment of the service's clock in the viewer's locale ("14:05" today,
 * with the date otherwise); "—" for a missing or unreadable time.
 */
export function formatTime(
  iso: string | null | undefined,
  now: Date = new Date(),
  locale?: string
): string {
  if (!iso) {
    return '—';
  }
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) {
    return '—';
  }
  const sameDay = moment.toDateString() === now.toDateString();
  return sameDay
    ? moment.toLocaleTimeString(locale, { hour: '2-digit', minute: '2-digit' })
    : moment.toLocaleString(locale, {
        year: 'numeric',
        month: 'short',
        day: 'numeric',
        hour: '2-digit',
        minute: '2-digit'
      });
}
