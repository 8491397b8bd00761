/**
 * Why the server stopped, in words, and which source of that knowledge wins.
 */
import { ITrans, plainTrans } from './trans';

/** The words the stop dialog opens with for a `reason` (an `end_reason`). */
export function stopWords(
  reason: string | null | undefined,
  trans: ITrans = plainTrans
): string {
  switch (reason) {
    case 'expired':
      return trans.__('Your paid time ran out.');
    case 'admin':
      return trans.__('An administrator stopped your server.');
    case 'gpu_idle':
      return trans.__('Its GPUs stayed idle.');
    case 'user':
      return trans.__('You stopped this server.');
    default:
      return trans.__('Your server was stopped.');
  }
}

/** Whether `stopWords` has words of its own for `reason` (else the service's message helps). */
export function isKnownReason(reason: string | null | undefined): boolean {
  return ['expired', 'admin', 'gpu_idle', 'user'].includes(reason ?? '');
}

export interface IStopClues {
  /** `reason` of the server-stopping event, when it arrived. */
  eventReason?: string | null;
  /** `stop.reason` of the latest status that had one. */
  statusReason?: string | null;
  /** Whether the local countdown reached 0. */
  countdownRanOut?: boolean;
}

/**
 * The reason to show: the server's own last word (the event) first, then the
 * service's decision seen in a status, then "expired" when the countdown ran
 * out, else null (words: "Your server was stopped").
 */
export function chooseStopReason(clues: IStopClues): string | null {
  if (clues.eventReason) {
    return clues.eventReason;
  }
  if (clues.statusReason) {
    return clues.statusReason;
  }
  return clues.countdownRanOut ? 'expired' : null;
}

/**
 * The service's (or server's) own words to show under `stopWords`, or null:
 * only for a reason without words of its own, and not when they only repeat
 * the generic sentence ("Your server was stopped").
 */
export function stopDetail(
  reason: string | null | undefined,
  message: string | null | undefined,
  trans: ITrans = plainTrans
): string | null {
  if (!message || isKnownReason(reason)) {
    return null;
  }
  const plain = (text: string) => text.trim().replace(/[.!]+$/, '').toLowerCase();
  return plain(message) === plain(stopWords(reason, trans)) ? null : message;
}
