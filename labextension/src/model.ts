/**
 * `CreditsModel`: the one place that polls `credits/status` for this page.
 *
 * Every 15 s normally (the server extension caches the service's answer, so
 * this costs the service nothing extra), backing off up to 5 min while this
 * server does not answer, and at once (`?refresh=1`) after the user acts. It
 * keeps the offset between the server's clock and the browser's, and while a
 * session is open emits `tick` every second so that the countdown, the status
 * bar and the warnings run locally between polls.
 */
import { ServerConnection } from '@jupyterlab/services';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { clockOffset, nextOffset, secondsLeft } from './countdown';
import { requestCredits } from './request';
import { IServerStopped, isLaterSession } from './serverstate';
import {
  ICreditsStatus,
  IExtendRequest,
  IExtendResult,
  IPollFailure
} from './types';

/** How often the page asks its server, while things go well (ms). */
export const POLL_INTERVAL = 15_000;
/** The longest wait between asks while the server does not answer (ms). */
export const POLL_MAX = 300_000;

export class CreditsModel {
  constructor(options: CreditsModel.IOptions) {
    this._settings = options.serverSettings;
    this._poll = new Poll({
      name: 'jupyterhub-credits:status',
      factory: () => this._fetch(false),
      frequency: { interval: POLL_INTERVAL, backoff: 2, max: POLL_MAX },
      // Warnings and saving must happen in a background tab too.
      standby: 'never'
    });
  }

  /** The latest status the server answered, or null before the first. */
  get status(): ICreditsStatus | null {
    return this._status;
  }

  /** The latest failed poll, cleared by the next answer. */
  get failure(): IPollFailure | null {
    return this._failure;
  }

  /** Server clock minus browser clock (ms), from the latest answer. */
  get offset(): number {
    return this._offset;
  }

  /** A new status arrived, or a poll failed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** A poll failed: the server did not answer with a status. */
  get pollFailed(): ISignal<this, IPollFailure> {
    return this._pollFailed;
  }

  /** Every second while a session with a `paid_until` is open. */
  get tick(): ISignal<this, void> {
    return this._tick;
  }

  /**
   * The server's stop, once this page knows of it (set by the stop watcher);
   * null while it runs. The countdown stops then: the time it counted belonged
   * to a session that is over.
   */
  get stopped(): IServerStopped | null {
    return this._stopped;
  }

  /** Record (or refine, e.g. with the event's reason) the server's stop. */
  markStopped(stopped: IServerStopped): void {
    const before = this._stopped;
    if (
      before &&
      before.reason === stopped.reason &&
      before.message === stopped.message &&
      before.at === stopped.at
    ) {
      return;
    }
    this._stopped = { ...stopped, session: stopped.session ?? before?.session ?? null };
    this._stopTicking();
    this._changed.emit();
  }

  /** Seconds of paid time left by the local countdown; null without a session. */
  secondsLeft(now: number = Date.now()): number | null {
    return secondsLeft(this._status?.session?.paid_until, now, this._offset);
  }

  /** Ask at once, making the server ask the service again (`?refresh=1`). */
  async refresh(): Promise<void> {
    try {
      await this._fetch(true);
    } catch {
      // Already recorded as a failure; the poll keeps trying on its own.
    }
  }

  /** `POST credits/extend`; the answer's fresh status is applied at once. */
  async extend(body: IExtendRequest): Promise<IExtendResult> {
    let answer;
    const sentAt = Date.now();
    try {
      answer = await requestCredits<{ message?: string; status?: ICreditsStatus }>(
        'extend',
        this._settings,
        { method: 'POST', body: JSON.stringify(body) }
      );
    } catch (error) {
      return { ok: false, httpStatus: 0, message: String((error as Error).message ?? error) };
    }
    const ok = answer.httpStatus === 200;
    const message =
      answer.body?.message ??
      (ok ? '' : `HTTP ${answer.httpStatus}`);
    if (ok && answer.body?.status) {
      this._apply(answer.body.status, this._seq + 1, sentAt, Date.now());
    }
    return { ok, httpStatus: answer.httpStatus, message };
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._poll.dispose();
    this._stopTicking();
    Signal.clearData(this);
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  private async _fetch(refresh: boolean): Promise<void> {
    const seq = ++this._seq;
    const sentAt = Date.now();
    let failure: IPollFailure | null = null;
    let status: ICreditsStatus | null = null;
    try {
      const answer = await requestCredits<ICreditsStatus>(
        refresh ? 'status?refresh=1' : 'status',
        this._settings
      );
      if (answer.httpStatus !== 200) {
        failure = { httpStatus: answer.httpStatus, message: `HTTP ${answer.httpStatus}` };
      } else if (!answer.body || typeof answer.body.available !== 'boolean') {
        failure = { httpStatus: -1, message: 'not a credits status' };
      } else {
        status = answer.body;
      }
    } catch (error) {
      failure = { httpStatus: 0, message: String((error as Error).message ?? error) };
    }
    if (failure) {
      this._failure = failure;
      this._pollFailed.emit(failure);
      this._changed.emit();
      // Rejecting makes the poll back off.
      throw new Error(failure.message);
    }
    this._apply(status!, seq, sentAt, Date.now());
  }

  /** Take `status` unless a later request's answer was already taken. */
  private _apply(
    status: ICreditsStatus,
    seq: number,
    sentAt: number,
    receivedAt: number
  ): void {
    if (seq < this._appliedSeq) {
      return;
    }
    this._appliedSeq = seq;
    this._seq = Math.max(this._seq, seq);
    this._status = status;
    this._failure = null;
    this._offset = nextOffset(
      this._measuredOffset ? this._offset : null,
      clockOffset(status.now, sentAt, receivedAt)
    );
    this._measuredOffset = true;
    if (this._stopped && isLaterSession(this._stopped, status.session)) {
      // The server was started again (this page reconnected to it): a new session.
      this._stopped = null;
    }
    if (status.session?.paid_until && !this._stopped) {
      this._startTicking();
    } else {
      this._stopTicking();
    }
    this._changed.emit();
  }

  private _startTicking(): void {
    if (this._timer === null) {
      this._timer = window.setInterval(() => this._onTick(), 1000);
    }
  }

  private _stopTicking(): void {
    if (this._timer !== null) {
      window.clearInterval(this._timer);
      this._timer = null;
    }
  }

  private _onTick(): void {
    const left = this.secondsLeft();
    this._tick.emit();
    // At the end of the paid time, learn at once what the meter decided
    // (stopped, or auto-extended) instead of waiting for the next poll.
    const paidUntil = this._status?.session?.paid_until ?? null;
    if (left === 0 && paidUntil !== this._endAsked) {
      this._endAsked = paidUntil;
      void this.refresh();
    }
  }

  private _settings: ServerConnection.ISettings;
  private _poll: Poll;
  private _status: ICreditsStatus | null = null;
  private _stopped: IServerStopped | null = null;
  private _failure: IPollFailure | null = null;
  private _offset = 0;
  private _measuredOffset = false;
  private _seq = 0;
  private _appliedSeq = 0;
  private _timer: number | null = null;
  private _endAsked: string | null = null;
  private _isDisposed = false;
  private _changed = new Signal<this, void>(this);
  private _pollFailed = new Signal<this, IPollFailure>(this);
  private _tick = new Signal<this, void>(this);
}

export namespace CreditsModel {
  export interface IOptions {
    serverSettings: ServerConnection.ISettings;
  }
}
