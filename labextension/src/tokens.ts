/**
 * Tokens for the pieces several plugins share: one model per page, one panel.
 */
import { Token } from '@lumino/coreutils';

import { CreditsModel } from './model';
import { ISaveResult } from './documents';

/** The page's credits model (one poll of `credits/status` per page). */
export const ICreditsModel = new Token<CreditsModel>(
  'jupyterhub-credits:model',
  'The credits status of this server, polled from its server extension.'
);

/** The credits sidebar panel. */
export interface ICreditsPanel {
  /** Show the panel and put the cursor in its hours box (owner only). */
  openForExtend(): void;
}
export const ICreditsPanel = new Token<ICreditsPanel>(
  'jupyterhub-credits:panel',
  'The credits sidebar panel.'
);

/** Saving before the stop: shared by the warnings and the stop dialog. */
export interface ICreditsSaver {
  /** Save every dirty open document now. */
  saveAll(): Promise<ISaveResult>;
  /** The latest save by `saveAll` that saved (or failed to save) something, or null. */
  readonly lastSave: ISaveResult | null;
  /** How many open documents have unsaved changes now. */
  dirtyCount(): number;
}
export const ICreditsSaver = new Token<ICreditsSaver>(
  'jupyterhub-credits:saver',
  'Saves open documents before the server stops.'
);

/** The translation domain of every string of this extension. */
export const TRANSLATION_DOMAIN = 'jupyterhub_credits';

export const CommandIDs = {
  openPanel: 'credits:open-panel',
  openTensorBoard: 'credits:open-tensorboard'
};

export const PANEL_ID = 'jp-credits-panel';
