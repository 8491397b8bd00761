/**
 * What the page says when it loses its server.
 *
 * Under JupyterHub, JupyterLab's hub extension asks "Your server is not running.
 * Would you like to restart it?" on any lost connection; elsewhere JupyterLab
 * says "Server Connection Error". When the credits extension knows the server
 * was stopped (or its paid time ran out), the stop dialog says why instead.
 * Otherwise this asks what JupyterLab would, in its own (jupyterlab) words, and
 * keeps that dialog so that the stop dialog can close it: JupyterLab shows one
 * dialog at a time, and the stop dialog must not wait behind a connection error.
 * The hub extension's plugin (`@jupyterlab/hub-extension:connectionlost`) is
 * disabled in this package's package.json so that this one provides
 * `IConnectionLost`.
 */
import { IConnectionLost, JupyterFrontEnd, JupyterLab } from '@jupyterlab/application';
import { Dialog } from '@jupyterlab/apputils';
import { ITranslator } from '@jupyterlab/translation';

import { StopWatcher } from './stop';

export class ConnectionLostDialogs {
  constructor(options: ConnectionLostDialogs.IOptions) {
    this._app = options.app;
    this._paths = options.paths;
    this._translator = options.translator;
    this._watcher = options.watcher;
    this._info = options.info;
    this._watcher.aboutToShow.connect(this.dismiss, this);
  }

  /** The `IConnectionLost` function JupyterLab calls on every lost connection. */
  readonly handler: IConnectionLost = async () => {
    if (this._watcher.stopSuspected()) {
      await this._watcher.show();
      return;
    }
    if (this._current || this._watcher.shown || !this._showAgain) {
      return;
    }
    await this._ask();
  };

  /** Close the connection dialog, if one is open. */
  dismiss(): void {
    this._current?.reject();
  }

  private async _ask(): Promise<void> {
    const trans = this._translator.load('jupyterlab');
    const hub = !!this._paths.urls.hubPrefix;
    const dialog = hub
      ? new Dialog({
          title: trans.__('Server unavailable or unreachable'),
          body: trans.__(
            'Your server at %1 is not running.\nWould you like to restart it?',
            this._paths.urls.base
          ),
          buttons: [
            Dialog.okButton({ label: trans.__('Restart') }),
            Dialog.cancelButton({ label: trans.__('Dismiss') })
          ]
        })
      : new Dialog({
          title: trans.__('Server Connection Error'),
          body: trans.__(
            'A connection to the Jupyter server could not be established.\n' +
              'JupyterLab will continue trying to reconnect.\n' +
              'Check your network connection or Jupyter server configuration.\n'
          ),
          checkbox: {
            label: trans.__('Do not show this message again in this session.')
          },
          buttons: [Dialog.cancelButton({ label: trans.__('Close') })]
        });
    this._current = dialog;
    if (this._info) {
      this._info.isConnected = false;
    }
    try {
      const result = await dialog.launch();
      if (result.isChecked) {
        this._showAgain = false;
      }
      if (hub && result.button.accept) {
        await this._app.commands.execute('hub:restart');
      }
    } finally {
      this._current = null;
      if (this._info) {
        this._info.isConnected = true;
      }
    }
  }

  private _app: JupyterFrontEnd;
  private _paths: JupyterFrontEnd.IPaths;
  private _translator: ITranslator;
  private _watcher: StopWatcher;
  private _info: JupyterLab.IInfo | null;
  private _current: Dialog<unknown> | null = null;
  private _showAgain = true;
}

export namespace ConnectionLostDialogs {
  export interface IOptions {
    app: JupyterFrontEnd;
    paths: JupyterFrontEnd.IPaths;
    translator: ITranslator;
    watcher: StopWatcher;
    info: JupyterLab.IInfo | null;
  }
}
