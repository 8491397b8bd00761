/**
 * Saving every open document with unsaved changes, before the server stops.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { DocumentRegistry, DocumentWidget } from '@jupyterlab/docregistry';

export interface ISaveResult {
  /** Documents saved now. */
  saved: number;
  /** Paths of documents that had changes and could not be saved. */
  failed: string[];
  /** When it was done (browser clock, ms). */
  at: number;
}

/** The distinct contexts of the documents open in the main area. */
function openContexts(app: JupyterFrontEnd): DocumentRegistry.Context[] {
  const contexts = new Set<DocumentRegistry.Context>();
  for (const widget of app.shell.widgets('main')) {
    if (widget instanceof DocumentWidget) {
      // Two views of one file share a context: it is saved once.
      contexts.add(widget.context);
    }
  }
  return [...contexts];
}

/** How many open documents have unsaved changes. */
export function countDirty(app: JupyterFrontEnd): number {
  return openContexts(app).filter(c => c.model.dirty && !c.isDisposed).length;
}

/** Save every open document with unsaved changes, all at once. */
export async function saveDirtyDocuments(app: JupyterFrontEnd): Promise<ISaveResult> {
  const dirty = openContexts(app).filter(c => c.model.dirty && !c.isDisposed);
  const results = await Promise.allSettled(dirty.map(c => c.save()));
  const failed = dirty
    .filter((_, i) => results[i].status === 'rejected')
    .map(c => c.path);
  return { saved: dirty.length - failed.length, failed, at: Date.now() };
}
