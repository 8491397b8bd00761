/**
 * The JSON of `GET {base_url}credits/status` and `POST {base_url}credits/extend`
 * (the server extension's answers; issue 9 contract, section 2). Names are the
 * service's (`available`, `paid_until`, `seconds_left`, …): one name for one thing.
 */

export interface ICreditsBalance {
  available: string;
  reserved: string;
}

export interface ICreditsSession {
  id?: number;
  image?: string | null;
  gpu_type?: string | null;
  gpus?: number;
  rate_per_hour?: string | null;
  held?: string | null;
  requested_at?: string | null;
  ready_at?: string | null;
  paid_until?: string | null;
  seconds_left?: number | null;
  cost_so_far?: string | null;
  auto_extend?: boolean;
  state?: string;
  warnings?: number[];
  notice?: string;
}

export interface ICreditsStop {
  reason: string;
  at: string | null;
  message: string | null;
}

export interface IEarningRule {
  rule: string;
  enabled: boolean;
  count: number;
  points: string;
  max_per_day: number | null;
  max_points_per_day: string | null;
}

export interface IEarningsToday {
  day?: string;
  frozen?: boolean;
  points: string;
  rules: IEarningRule[];
}

export interface IRunOutcome {
  outcome: string;
  points: string;
  rule: string | null;
  reason: string | null;
}

export interface ITrainingRun {
  key: string;
  started_at: string | null;
  ended_at: string | null;
  epochs: number | null;
  steps: number | null;
  duration_s: number | null;
  metrics?: Record<string, unknown> | null;
  logdir?: string | null;
  state: 'held' | 'sent' | string;
  outcome: IRunOutcome | null;
  tensorboard_url: string | null;
}

export interface IGpuMinute {
  minute: string;
  utilization: number;
}

export interface ICreditsStatus {
  available: boolean;
  error: string | null;
  retry_in: number | null;
  fetched_at: string | null;
  now: string;
  user: string;
  viewer: string;
  can_spend: boolean;
  server: { name: string; label: string; id: string };
  balance: ICreditsBalance | null;
  session: ICreditsSession | null;
  stop: ICreditsStop | null;
  warning_thresholds: number[];
  earnings_today: IEarningsToday | null;
  runs: ITrainingRun[];
  gpu_history: IGpuMinute[] | null;
  tensorboard: { url: string } | null;
  links: { my_credits?: string; start_again?: string };
}

/** `POST credits/extend` bodies. */
export interface IExtendRequest {
  hours?: string;
  key?: string;
  auto_extend?: boolean;
}

/** What became of a `POST credits/extend`. */
export interface IExtendResult {
  ok: boolean;
  /** The server's (or service's) words: success or refusal. */
  message: string;
  /** HTTP status; 0 when the server could not be reached. */
  httpStatus: number;
}

/** A failed poll of `credits/status` (the server itself did not answer). */
export interface IPollFailure {
  /** HTTP status, or 0 for a network error, or -1 for an answer that was not our JSON. */
  httpStatus: number;
  message: string;
}

/** The data of the server-stopping event (jupyter_events schema, version 1). */
export interface IServerStopping {
  reason: string;
  message: string;
  at: string;
  grace_seconds: number;
}

export const SERVER_STOPPING_SCHEMA =
  'https://jupyterhub-credits.readthedocs.io/events/server-stopping/v1';
