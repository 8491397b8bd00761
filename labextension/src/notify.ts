/**
 * Warnings as JupyterLab notifications, driven by the local countdown.
 *
 * At each of `warning_thresholds` a toast says how much paid time is left,
 * with an "Extend" action for the owner. At the smallest threshold every open
 * document with unsaved changes is saved first, and the toast says how many.
 *
 * When the server stops, the time-left toasts are dismissed (the stop dialog
 * says what happened) and the saving one loses its "Extend" action but keeps
 * saying what was saved; when the paid time moves (extended), the toasts
 * about the old time are dismissed. `staleWarnings` decides which.
 */
import { Notification } from '@jupyterlab/apputils';

import { formatTimeLeft } from './format';
import { CreditsModel } from './model';
import { ICreditsPanel, ICreditsSaver } from './tokens';
import { ITrans } from './trans';
import { IRaisedWarning, WarningTracker, staleWarnings } from './warnings';

export class CreditsWarnings {
  constructor(options: CreditsWarnings.IOptions) {
    this._model = options.model;
    this._saver = options.saver;
    this._panel = options.panel;
    this._trans = options.trans;
    this._model.tick.connect(this._check, this);
    this._model.changed.connect(this._check, this);
  }

  private _check(): void {
    this._dismissStale();
    if (this._model.stopped) {
      // Nothing left to warn about or extend: the stop dialog says what happened.
      return;
    }
    const status = this._model.status;
    const session = status?.session;
    const left = this._model.secondsLeft();
    const warning = this._tracker.update(
      session?.paid_until,
      left,
      status?.warning_thresholds ?? []
    );
    if (warning && session?.paid_until) {
      void this._notify(
        session.paid_until,
        warning.secondsLeft,
        warning.save,
        !!status?.can_spend
      );
    }
  }

  /** Where the model is now, as `staleWarnings` reads it. */
  private _now() {
    return {
      stopped: this._model.stopped !== null,
      paidUntil: this._model.status?.session?.paid_until
    };
  }

  /** Dismiss (or strip of "Extend") the toasts that the model's state made stale. */
  private _dismissStale(): void {
    if (this._raised.length === 0) {
      return;
    }
    const stale = staleWarnings(this._raised, this._now());
    const done = new Set(stale.dismiss);
    for (const id of stale.dismiss) {
      Notification.dismiss(id);
    }
    for (const warning of stale.keepSaved) {
      done.add(warning.id);
      Notification.update({
        id: warning.id,
        message: warning.savedWords!,
        type: warning.saveFailed ? 'warning' : 'info',
        autoClose: false,
        actions: []
      });
    }
    this._raised = this._raised.filter(warning => !done.has(warning.id));
  }

  private async _notify(
    paidUntil: string,
    left: number,
    save: boolean,
    canSpend: boolean
  ): Promise<void> {
    const trans = this._trans;
    let message = trans.__('%1 of paid time on this server.', formatTimeLeft(left, trans));
    let savedWords: string | null = null;
    let saveFailed = false;
    if (save) {
      const result = await this._saver.saveAll();
      let words = trans._n('Saved %1 document.', 'Saved %1 documents.', result.saved);
      saveFailed = result.failed.length > 0;
      if (saveFailed) {
        words += ' ' + trans.__('Could not save: %1.', result.failed.join(', '));
      }
      message += ' ' + words;
      if (result.saved > 0 || saveFailed) {
        savedWords = words;
      }
    }
    const raised: IRaisedWarning = { id: '', paidUntil, savedWords, saveFailed };
    // The server may have stopped, or the time moved, while saving.
    const stale = staleWarnings([raised], this._now());
    if (stale.dismiss.length > 0) {
      return;
    }
    if (stale.keepSaved.length > 0) {
      Notification.emit(savedWords!, saveFailed ? 'warning' : 'info', { autoClose: false });
      return;
    }
    const actions: Notification.IAction[] = [];
    if (canSpend && this._panel) {
      const panel = this._panel;
      actions.push({
        label: trans.__('Extend'),
        caption: trans.__('Open the credits panel to add paid time'),
        displayType: 'accent',
        callback: () => panel.openForExtend()
      });
    }
    raised.id = Notification.warning(message, { autoClose: false, actions });
    this._raised.push(raised);
  }

  private _model: CreditsModel;
  private _saver: ICreditsSaver;
  private _panel: ICreditsPanel | null;
  private _trans: ITrans;
  private _tracker = new WarningTracker();
  /** The toasts raised that still offer "Extend" and tell a time left. */
  private _raised: IRaisedWarning[] = [];
}

export namespace CreditsWarnings {
  export interface IOptions {
    model: CreditsModel;
    saver: ICreditsSaver;
    panel: ICreditsPanel | null;
    trans: ITrans;
  }
}
