/**
 * Warnings as JupyterLab notifications, driven by the local countdown.
 *
 * At each of `warning_thresholds` a toast says how much paid time is left,
 * with an "Extend" action for the owner. At the smallest threshold every open
 * document with unsaved changes is saved first, and the toast says how many.
 */
import { Notification } from '@jupyterlab/apputils';

import { formatTimeLeft } from './format';
import { CreditsModel } from './model';
import { ICreditsPanel, ICreditsSaver } from './tokens';
import { ITrans } from './trans';
import { WarningTracker } from './warnings';

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
    if (warning) {
      void this._notify(warning.secondsLeft, warning.save, !!status?.can_spend);
    }
  }

  private async _notify(left: number, save: boolean, canSpend: boolean): Promise<void> {
    const trans = this._trans;
    let message = trans.__('%1 of paid time on this server.', formatTimeLeft(left, trans));
    if (save) {
      const result = await this._saver.saveAll();
      message += ' ' + trans._n('Saved %1 document.', 'Saved %1 documents.', result.saved);
      if (result.failed.length > 0) {
        message += ' ' + trans.__('Could not save: %1.', result.failed.join(', '));
      }
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
    Notification.warning(message, { autoClose: false, actions });
  }

  private _model: CreditsModel;
  private _saver: ICreditsSaver;
  private _panel: ICreditsPanel | null;
  private _trans: ITrans;
  private _tracker = new WarningTracker();
}

export namespace CreditsWarnings {
  export interface IOptions {
    model: CreditsModel;
    saver: ICreditsSaver;
    panel: ICreditsPanel | null;
    trans: ITrans;
  }
}
