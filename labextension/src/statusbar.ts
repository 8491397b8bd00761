/**
 * The status bar item: "112.50 cr · 2 h 13 min left", ticking locally;
 * "Server stopped" once the server stopped (serverstate.ts decides).
 */
import { Widget } from '@lumino/widgets';

import { CreditsModel } from './model';
import { describeStatus } from './serverstate';
import { ITrans } from './trans';

export class CreditsStatusItem extends Widget {
  constructor(options: CreditsStatusItem.IOptions) {
    super({ node: document.createElement('button') });
    this._model = options.model;
    this._trans = options.trans;
    this._onClick = options.onClick;
    this.addClass('jp-credits-StatusItem');
    this.node.setAttribute('type', 'button');
    this.node.title = this._trans.__('Credits: open the panel');
    this.node.addEventListener('click', this._onClick);
    this._model.changed.connect(this._render, this);
    this._model.tick.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.node.removeEventListener('click', this._onClick);
    this._model.changed.disconnect(this._render, this);
    this._model.tick.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const { state, text } = describeStatus(
      {
        status: this._model.status,
        secondsLeft: this._model.secondsLeft(),
        stopped: this._model.stopped
      },
      this._trans
    );
    this.node.dataset.state = state;
    if (this.node.textContent !== text) {
      this.node.textContent = text;
    }
  }

  private _model: CreditsModel;
  private _trans: ITrans;
  private _onClick: () => void;
}

export namespace CreditsStatusItem {
  export interface IOptions {
    model: CreditsModel;
    trans: ITrans;
    onClick: () => void;
  }
}
