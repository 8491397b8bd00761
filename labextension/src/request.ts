/**
 * Requests to this package's server extension, and nothing else: the browser
 * never talks to the hub or the credits service (their tokens stay server-side).
 * `ServerConnection` adds the server's auth and XSRF headers.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** An answer of the server extension: its HTTP status and JSON body (null if none). */
export interface IAnswer<T> {
  httpStatus: number;
  body: T | null;
}

/**
 * `{base_url}credits/<path>` with `init`. Resolves with any HTTP status (the
 * caller decides what a 403 or 503 means); rejects with
 * `ServerConnection.NetworkError` when the server cannot be reached.
 */
export async function requestCredits<T>(
  path: string,
  settings: ServerConnection.ISettings,
  init: RequestInit = {}
): Promise<IAnswer<T>> {
  const url = URLExt.join(settings.baseUrl, 'credits', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  let body: T | null = null;
  if (text) {
    try {
      body = JSON.parse(text) as T;
    } catch {
      // Not our JSON: e.g. the hub's HTML page once this server is gone.
      body = null;
    }
  }
  return { httpStatus: response.status, body };
}
