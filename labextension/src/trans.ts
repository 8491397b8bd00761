/**
 * The part of JupyterLab's `TranslationBundle` the pure modules use.
 *
 * The pure modules (format, countdown, warnings, cost, stopreason) take this
 * interface instead of importing `@jupyterlab/translation`, so that Jest runs
 * them without JupyterLab's ES modules; in JupyterLab they get the real bundle
 * of the `jupyterhub_credits` domain.
 */
export interface ITrans {
  /** A message; `%1`, `%2`… are replaced by the arguments. */
  __(msgid: string, ...args: unknown[]): string;
  /** A message in the singular or plural form for `n`; `%1` is `n`. */
  _n(msgid: string, msgidPlural: string, n: number, ...args: unknown[]): string;
}

function strfmt(text: string, args: unknown[]): string {
  return text.replace(/%(\d+)/g, (whole, index) =>
    Number(index) >= 1 && Number(index) <= args.length
      ? String(args[Number(index) - 1])
      : whole
  );
}

/** English, untranslated: what JupyterLab's `nullTranslator` does (for tests). */
export const plainTrans: ITrans = {
  __: (msgid, ...args) => strfmt(msgid, args),
  _n: (msgid, msgidPlural, n, ...args) =>
    strfmt(n === 1 ? msgid : msgidPlural, [n, ...args])
};
