/**
 * jupyterhub-credits in JupyterLab: one plugin per feature, tokens for the
 * pieces they share (the model, the panel, the saver).
 */
import {
  IConnectionLost,
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin,
  JupyterLab
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IStatusBar } from '@jupyterlab/statusbar';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';

import { ConnectionLostDialogs } from './connectionlost';
import { ISaveResult, countDirty, saveDirtyDocuments } from './documents';
import { CreditsModel } from './model';
import { CreditsWarnings } from './notify';
import { CreditsPanel } from './panel';
import { CreditsStatusItem } from './statusbar';
import { StopWatcher } from './stop';
import {
  CommandIDs,
  ICreditsModel,
  ICreditsPanel,
  ICreditsSaver,
  PANEL_ID,
  TRANSLATION_DOMAIN
} from './tokens';

function bundle(translator: ITranslator | null) {
  return (translator ?? nullTranslator).load(TRANSLATION_DOMAIN);
}

/** The model: one poll of `credits/status` for the whole page. */
const modelPlugin: JupyterFrontEndPlugin<CreditsModel> = {
  id: 'jupyterhub-credits:model',
  description: 'Polls this server for its credits status.',
  autoStart: true,
  provides: ICreditsModel,
  activate: (app: JupyterFrontEnd) =>
    new CreditsModel({ serverSettings: app.serviceManager.serverSettings })
};

/** Saving open documents before the stop. */
const saverPlugin: JupyterFrontEndPlugin<ICreditsSaver> = {
  id: 'jupyterhub-credits:saver',
  description: 'Saves every open document with unsaved changes before the server stops.',
  autoStart: true,
  provides: ICreditsSaver,
  activate: (app: JupyterFrontEnd): ICreditsSaver => {
    let lastSave: ISaveResult | null = null;
    return {
      get lastSave() {
        return lastSave;
      },
      saveAll: async () => {
        const result = await saveDirtyDocuments(app);
        // Remember saves that did something: the stop dialog reports the last of them.
        if (result.saved > 0 || result.failed.length > 0) {
          lastSave = result;
        }
        return result;
      },
      dirtyCount: () => countDirty(app)
    };
  }
};

/** The sidebar panel and the command that opens it. */
const panelPlugin: JupyterFrontEndPlugin<ICreditsPanel> = {
  id: 'jupyterhub-credits:panel',
  description: 'The credits sidebar panel.',
  autoStart: true,
  requires: [ICreditsModel],
  optional: [ITranslator, ILabShell, ICommandPalette],
  provides: ICreditsPanel,
  activate: (
    app: JupyterFrontEnd,
    model: CreditsModel,
    translator: ITranslator | null,
    labShell: ILabShell | null,
    palette: ICommandPalette | null
  ): ICreditsPanel => {
    const trans = bundle(translator);
    const panel = new CreditsPanel({
      model,
      trans,
      activate: () => app.shell.activateById(PANEL_ID)
    });
    app.shell.add(panel, 'left', { rank: 1000, type: 'Credits' });
    app.commands.addCommand(CommandIDs.openPanel, {
      label: trans.__('Open the Credits Panel'),
      caption: trans.__('Balance, time left, extend, training runs'),
      execute: () => app.shell.activateById(PANEL_ID)
    });
    palette?.addItem({ command: CommandIDs.openPanel, category: trans.__('Credits') });
    return panel;
  }
};

/** The status bar item; a click opens the panel. */
const statusPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterhub-credits:status',
  description: 'Balance and time left in the status bar.',
  autoStart: true,
  requires: [ICreditsModel, IStatusBar],
  optional: [ITranslator],
  activate: (
    app: JupyterFrontEnd,
    model: CreditsModel,
    statusBar: IStatusBar,
    translator: ITranslator | null
  ) => {
    const item = new CreditsStatusItem({
      model,
      trans: bundle(translator),
      onClick: () => void app.commands.execute(CommandIDs.openPanel)
    });
    statusBar.registerStatusItem('jupyterhub-credits:status', {
      item,
      align: 'left',
      rank: 100
    });
  }
};

/** Notifications at the warning thresholds, saving at the last one. */
const warningsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterhub-credits:warnings',
  description: 'Warns before the paid time ends and saves open documents.',
  autoStart: true,
  requires: [ICreditsModel, ICreditsSaver],
  optional: [ICreditsPanel, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    model: CreditsModel,
    saver: ICreditsSaver,
    panel: ICreditsPanel | null,
    translator: ITranslator | null
  ) => {
    new CreditsWarnings({ model, saver, panel, trans: bundle(translator) });
  }
};

/** The stop dialog, and what the page says when it loses its server. */
const stopPlugin: JupyterFrontEndPlugin<IConnectionLost> = {
  id: 'jupyterhub-credits:stop',
  description: 'Says why the server stopped, saving open documents first.',
  autoStart: true,
  requires: [ICreditsModel, ICreditsSaver, JupyterFrontEnd.IPaths],
  optional: [ITranslator, JupyterLab.IInfo],
  provides: IConnectionLost,
  activate: (
    app: JupyterFrontEnd,
    model: CreditsModel,
    saver: ICreditsSaver,
    paths: JupyterFrontEnd.IPaths,
    translator: ITranslator | null,
    info: JupyterLab.IInfo | null
  ): IConnectionLost => {
    const watcher = new StopWatcher({ app, model, saver, trans: bundle(translator) });
    const dialogs = new ConnectionLostDialogs({
      app,
      paths,
      translator: translator ?? nullTranslator,
      watcher,
      info
    });
    return dialogs.handler;
  }
};

/** TensorBoard, one click away (the launcher tile comes from jupyter-server-proxy). */
const tensorboardPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterhub-credits:tensorboard',
  description: "Opens this server's TensorBoard in a new tab.",
  autoStart: true,
  requires: [ICreditsModel],
  optional: [ITranslator, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    model: CreditsModel,
    translator: ITranslator | null,
    palette: ICommandPalette | null
  ) => {
    const trans = bundle(translator);
    app.commands.addCommand(CommandIDs.openTensorBoard, {
      label: trans.__('Open TensorBoard'),
      caption: trans.__("This server's TensorBoard, over its notebook folder"),
      isEnabled: () => !!model.status?.tensorboard?.url,
      execute: () => {
        const url = model.status?.tensorboard?.url;
        if (url) {
          window.open(url, '_blank', 'noopener');
        }
      }
    });
    model.changed.connect(() => app.commands.notifyCommandChanged(CommandIDs.openTensorBoard));
    palette?.addItem({ command: CommandIDs.openTensorBoard, category: trans.__('Credits') });
  }
};

const plugins: JupyterFrontEndPlugin<any>[] = [
  modelPlugin,
  saverPlugin,
  panelPlugin,
  statusPlugin,
  warningsPlugin,
  stopPlugin,
  tensorboardPlugin
];

export default plugins;
