/**
 * The end of a server: "Your server has stopped", why, whether the work was
 * saved, and a link to start again, instead of a bare connection error.
 *
 * Three ways the page learns of a stop, best first:
 * 1. the server-stopping event (server extension, on SIGTERM/SIGINT): the
 *    server still serves for a few seconds, so every dirty document is saved
 *    at once, then the dialog shows the event's reason;
 * 2. a status that carries `stop` (a stop the service decided), followed by
 *    failing polls: the server is gone;
 * 3. the local countdown reached 0, followed by failing polls: paid time ran out.
 * A poll failing with nothing known (a network blip) shows nothing: the poll
 * backs off and tries again. The dialog shows once per page.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ISignal, Signal } from '@lumino/signaling';
import * as React from 'react';

import { parseInstant } from './countdown';
import { ISaveResult } from './documents';
import { formatTime } from './format';
import { CreditsModel } from './model';
import { serverStopped } from './serverstate';
import { chooseStopReason, stopDetail, stopWords } from './stopreason';
import { ICreditsSaver } from './tokens';
import { ITrans } from './trans';
import {
  ICreditsSession,
  IPollFailure,
  IServerStopping,
  SERVER_STOPPING_SCHEMA
} from './types';

/** Poll failures that mean "this server is not there": network, hub's 424/503, proxy's 502, hub HTML. */
const GONE_STATUSES = new Set([0, -1, 424, 502, 503]);

/** How long a stop decided before this page opened still counts as news (ms). */
const STOP_SLACK = 60_000;

export class StopWatcher {
  constructor(options: StopWatcher.IOptions) {
    this._app = options.app;
    this._model = options.model;
    this._saver = options.saver;
    this._trans = options.trans;
    this._openedAt = Date.now();
    this._model.changed.connect(this._onChanged, this);
    this._model.tick.connect(this._onTick, this);
    this._model.pollFailed.connect(this._onPollFailed, this);
    // The first status may have arrived before this plugin was activated.
    this._onChanged();
    this._app.serviceManager.events.stream.connect((_, emission) => {
      if (emission.schema_id === SERVER_STOPPING_SCHEMA) {
        void this.onServerStopping(emission as unknown as IServerStopping);
      }
    });
  }

  /** The stop dialog is about to show: other dialogs about the connection should close. */
  get aboutToShow(): ISignal<this, void> {
    return this._aboutToShow;
  }

  /** Whether the dialog was shown already. */
  get shown(): boolean {
    return this._shown;
  }

  /**
   * Whether a stop is known or due: an event arrived, a fresh `stop` was
   * seen, or the countdown ran out. A lost connection then means "stopped".
   */
  stopSuspected(): boolean {
    return this._event !== null || this._freshStop() !== null || this._ranOut();
  }

  /** The server says it is stopping: save now, then say so. */
  async onServerStopping(event: IServerStopping): Promise<void> {
    if (this._event) {
      return;
    }
    this._event = event;
    this._updateStopped();
    // The server keeps serving for grace_seconds: save within them.
    const graceMs = Math.max(1, Number(event.grace_seconds) || 3) * 1000;
    const saved = await Promise.race([
      this._saver.saveAll(),
      new Promise<null>(resolve => window.setTimeout(() => resolve(null), graceMs))
    ]);
    await this.show(saved);
  }

  /** Show the stop dialog, once; `saved` is what was just saved, if anything. */
  async show(saved: ISaveResult | null = null): Promise<void> {
    if (this._shown) {
      return;
    }
    this._shown = true;
    this._updateStopped();
    this._aboutToShow.emit();
    const trans = this._trans;
    const reason = this._reason();
    // The service's own words add something only where ours are generic.
    const detail = stopDetail(reason, this._message(), trans);
    const body = (
      <div className="jp-credits-stopDialog" data-reason={reason ?? 'unknown'}>
        <p className="jp-credits-stopReason">{stopWords(reason, trans)}</p>
        {detail && <p className="jp-credits-muted">{detail}</p>}
        <p className="jp-credits-stopSaved">{this._savedWords(saved)}</p>
        <p>
          <a className="jp-credits-startAgain" href={this._startAgainUrl()}>
            {trans.__('Start your server again')}
          </a>
        </p>
      </div>
    );
    await showDialog({
      title: trans.__('Your server has stopped'),
      body,
      buttons: [Dialog.okButton({ label: trans.__('Close') })]
    });
  }

  private _reason(): string | null {
    return chooseStopReason({
      eventReason: this._event?.reason,
      statusReason: this._freshStop()?.reason,
      countdownRanOut: this._ranOut()
    });
  }

  private _message(): string | null {
    return this._event?.message || this._freshStop()?.message || null;
  }

  /**
   * Tell the model once the server counts as stopped (the status bar and the
   * panel stop counting down then), with the best reason known so far.
   */
  private _updateStopped(serverGone = false): void {
    const stopped = serverStopped({
      eventArrived: this._event !== null,
      dialogShown: this._shown,
      freshStop: this._freshStop() !== null,
      sessionOpen: !!this._model.status?.session,
      countdownRanOut: this._ranOut(),
      serverGone
    });
    if (!stopped) {
      return;
    }
    this._marked = true;
    this._model.markStopped({
      reason: this._reason(),
      message: this._message(),
      at: this._event?.at || this._freshStop()?.at || null,
      session: this._lastSession
    });
  }

  private _savedWords(saved: ISaveResult | null): string {
    const trans = this._trans;
    // What was saved just now, else by the warning at the last threshold.
    const result = saved && (saved.saved > 0 || saved.failed.length > 0) ? saved : this._saver.lastSave;
    const dirty = this._saver.dirtyCount();
    if (result && result.failed.length > 0) {
      return trans.__('Could not save: %1.', result.failed.join(', '));
    }
    if (dirty > 0) {
      return trans._n(
        '%1 document had unsaved changes that could not be saved.',
        '%1 documents had unsaved changes that could not be saved.',
        dirty
      );
    }
    if (result && result.saved > 0) {
      return trans._n(
        'Your work was saved: %1 document at %2.',
        'Your work was saved: %1 documents at %2.',
        result.saved,
        formatTime(new Date(result.at).toISOString())
      );
    }
    return trans.__('Your work is saved: there were no unsaved changes.');
  }

  private _startAgainUrl(): string {
    const link = this._model.status?.links?.start_again;
    if (link) {
      return link;
    }
    // No status ever arrived: the hub's spawn page for this server, from the page config.
    const hubPrefix = PageConfig.getOption('hubPrefix');
    const user = PageConfig.getOption('hubServerUser') || PageConfig.getOption('hubUser');
    if (hubPrefix && user) {
      const name = PageConfig.getOption('hubServerName');
      return URLExt.join(hubPrefix, 'spawn', encodeURIComponent(user), encodeURIComponent(name));
    }
    return PageConfig.getBaseUrl();
  }

  /** The status's `stop`, if it is about this page's time (not an older session's). */
  private _freshStop() {
    const stop = this._model.status?.stop ?? null;
    if (!stop) {
      return null;
    }
    if (this._sawSession) {
      return stop;
    }
    const at = parseInstant(stop.at);
    const openedOnServerClock = this._openedAt + this._model.offset;
    return at !== null && at >= openedOnServerClock - STOP_SLACK ? stop : null;
  }

  private _ranOut(): boolean {
    if (this._ranOutFor === null) {
      return false;
    }
    const current = this._model.status?.session?.paid_until ?? null;
    // Same paid time, or the session is gone: it did run out. Extended: it did not.
    return current === null || current === this._ranOutFor;
  }

  private _onChanged(): void {
    if (this._marked && !this._model.stopped) {
      // The model saw a later session: the server was started again. A later
      // stop of it is news again.
      this._marked = false;
      this._event = null;
      this._ranOutFor = null;
      this._shown = false;
    }
    const session = this._model.status?.session;
    if (session) {
      this._sawSession = true;
      if (!this._model.stopped) {
        this._lastSession = session;
      }
    }
    this._onTick();
    this._updateStopped();
  }

  private _onTick(): void {
    const paidUntil = this._model.status?.session?.paid_until ?? null;
    if (paidUntil && this._model.secondsLeft() === 0) {
      this._ranOutFor = paidUntil;
    }
  }

  private _onPollFailed(_: CreditsModel, failure: IPollFailure): void {
    const gone = GONE_STATUSES.has(failure.httpStatus);
    this._updateStopped(gone);
    if (gone && this.stopSuspected()) {
      void this.show();
    }
  }

  private _app: JupyterFrontEnd;
  private _model: CreditsModel;
  private _saver: ICreditsSaver;
  private _trans: ITrans;
  private _openedAt: number;
  private _event: IServerStopping | null = null;
  private _sawSession = false;
  private _ranOutFor: string | null = null;
  private _shown = false;
  /** This watcher told the model the server stopped. */
  private _marked = false;
  /** The latest session seen before the stop (the stopped one). */
  private _lastSession: ICreditsSession | null = null;
  private _aboutToShow = new Signal<this, void>(this);
}

export namespace StopWatcher {
  export interface IOptions {
    app: JupyterFrontEnd;
    model: CreditsModel;
    saver: ICreditsSaver;
    trans: ITrans;
  }
}
