/**
 * The credits sidebar panel: balance, this server's session and its
 * countdown, Extend and auto-extend (owner only), today's earnings, training
 * runs with their TensorBoard links, GPU use, and a link to My credits.
 *
 * Styles use JupyterLab's CSS variables only (style/base.css), so the panel
 * follows the light and dark themes.
 */
import { LabIcon, ReactWidget } from '@jupyterlab/ui-components';
import { UUID } from '@lumino/coreutils';
import * as React from 'react';

import { paidFraction } from './countdown';
import { extensionCost } from './cost';
import { earningRuleWords } from './earnings';
import { formatAmount, formatElapsed, formatTime, formatTimeLeft } from './format';
import { CreditsModel } from './model';
import { IServerStopped, WARNING_SECONDS } from './serverstate';
import { stopDetail, stopWords } from './stopreason';
import { ICreditsPanel, PANEL_ID } from './tokens';
import { ITrans } from './trans';
import {
  ICreditsSession,
  ICreditsStatus,
  IExtendResult,
  IEarningsToday,
  IGpuMinute,
  ITrainingRun
} from './types';

const COIN_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 2a8 8 0 1 1 0 16 8 8 0 0 1 0-16z"/>
    <path d="M12.9 6h-1.8v1.1c-1.6.3-2.7 1.4-2.7 2.8 0 1.8 1.5 2.5 3.2 2.9 1.5.4 2 .8 2 1.4 0 .6-.6 1.1-1.6 1.1-1.1 0-1.8-.5-1.9-1.4H8.3c.1 1.6 1.2 2.7 2.8 3V18h1.8v-1.1c1.7-.3 2.8-1.4 2.8-2.9 0-1.9-1.6-2.6-3.3-3-1.4-.3-1.9-.7-1.9-1.3 0-.6.6-1 1.5-1s1.5.4 1.6 1.2h1.8c-.1-1.5-1.1-2.6-2.5-2.9z"/>
  </g>
</svg>`;

export const creditsIcon = new LabIcon({
  name: 'jupyterhub-credits:coin',
  svgstr: COIN_SVG
});

/** A fresh idempotency key for one confirmed extension. */
function newKey(): string {
  // randomUUID exists only in secure contexts (https, localhost); a hub served
  // over plain http still gets a random v4 UUID from Lumino.
  const crypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  return crypto?.randomUUID ? crypto.randomUUID() : UUID.uuid4();
}

/** A refusal in words; a request that never reached the server says so. */
function refusal(result: IExtendResult, trans: ITrans): string {
  return result.httpStatus === 0
    ? trans.__('This server could not be reached (%1); nothing was changed.', result.message)
    : result.message;
}

/** Re-render on every status and every countdown second. */
function useModel(model: CreditsModel): ICreditsStatus | null {
  const [, setVersion] = React.useState(0);
  React.useEffect(() => {
    const bump = () => setVersion(v => v + 1);
    model.changed.connect(bump);
    model.tick.connect(bump);
    return () => {
      model.changed.disconnect(bump);
      model.tick.disconnect(bump);
    };
  }, [model]);
  return model.status;
}

interface IViewProps {
  model: CreditsModel;
  trans: ITrans;
  hoursRef: React.RefObject<HTMLInputElement>;
}

function CreditsView({ model, trans, hoursRef }: IViewProps): JSX.Element {
  const status = useModel(model);
  const failure = model.failure;
  const problems: string[] = [];
  if (failure && !status) {
    problems.push(trans.__('This server does not answer (%1).', failure.message));
  }
  if (status?.error) {
    problems.push(status.error);
  } else if (status && !status.available) {
    problems.push(trans.__('The credits service is not answering.'));
  }
  return (
    <div className="jp-credits-body">
      <h2 className="jp-credits-heading">{trans.__('Credits')}</h2>
      {problems.length > 0 && (
        <div className="jp-credits-error" role="alert">
          {problems.join(' ')}
        </div>
      )}
      {!status && !failure && (
        <p className="jp-credits-muted">{trans.__('Loading…')}</p>
      )}
      {status?.balance && <Balance status={status} trans={trans} />}
      {model.stopped ? (
        <StoppedSession stopped={model.stopped} status={status} trans={trans} />
      ) : (
        status &&
        status.available && (
          <Session model={model} status={status} trans={trans} hoursRef={hoursRef} />
        )
      )}
      {status?.earnings_today && (
        <Earnings earnings={status.earnings_today} trans={trans} />
      )}
      {status && <Runs runs={status.runs ?? []} trans={trans} />}
      {status?.gpu_history && status.gpu_history.length > 0 && (
        <Gpu history={status.gpu_history} trans={trans} />
      )}
      {status && <Links status={status} trans={trans} />}
    </div>
  );
}

function Balance({ status, trans }: { status: ICreditsStatus; trans: ITrans }) {
  const balance = status.balance!;
  return (
    <section className="jp-credits-balance">
      <dl className="jp-credits-pairs">
        <dt>{trans.__('Available')}</dt>
        <dd className="jp-credits-available">{formatAmount(balance.available, trans)}</dd>
        <dt>{trans.__('Reserved')}</dt>
        <dd className="jp-credits-reserved">{formatAmount(balance.reserved, trans)}</dd>
      </dl>
      {status.viewer && status.user && status.viewer !== status.user && (
        <p className="jp-credits-muted">
          {trans.__("%1's account, viewed by %2", status.user, status.viewer)}
        </p>
      )}
    </section>
  );
}

function gpuWords(session: ICreditsSession, trans: ITrans): string {
  if (!session.gpus || !session.gpu_type || session.gpu_type === 'none') {
    return trans.__('CPU only');
  }
  return trans.__('%1 × %2', session.gpu_type, session.gpus);
}

/** The session block once the server stopped: why, instead of a countdown. */
function StoppedSession({
  stopped,
  status,
  trans
}: {
  stopped: IServerStopped;
  status: ICreditsStatus | null;
  trans: ITrans;
}) {
  const label = status?.server?.label || status?.server?.name || '';
  // The service's own words add something only where ours are generic.
  const detail = stopDetail(stopped.reason, stopped.message, trans);
  const session = stopped.session;
  const startAgain = status?.links?.start_again;
  return (
    <section className="jp-credits-session jp-credits-sessionStopped" data-state="stopped">
      <h3>{label ? trans.__('This server: %1', label) : trans.__('This server')}</h3>
      <p className="jp-credits-stopped" role="status">
        <span className="jp-credits-stoppedTitle">{trans.__('Server stopped')}</span>
        <span className="jp-credits-stoppedReason">{stopWords(stopped.reason, trans)}</span>
      </p>
      {detail && <p className="jp-credits-muted">{detail}</p>}
      <dl className="jp-credits-pairs">
        {session?.image && (
          <>
            <dt>{trans.__('Image')}</dt>
            <dd>{session.image}</dd>
          </>
        )}
        {session && (
          <>
            <dt>{trans.__('Hardware')}</dt>
            <dd>{gpuWords(session, trans)}</dd>
          </>
        )}
        {stopped.at && (
          <>
            <dt>{trans.__('Stopped at')}</dt>
            <dd>{formatTime(stopped.at)}</dd>
          </>
        )}
      </dl>
      {startAgain && (
        <p>
          <a className="jp-credits-panelStartAgain" href={startAgain}>
            {trans.__('Start your server again')}
          </a>
        </p>
      )}
    </section>
  );
}

function Session({ model, status, trans, hoursRef }: IViewProps & { status: ICreditsStatus }) {
  const session = status.session;
  const label = status.server?.label || status.server?.name || '';
  if (!session) {
    return (
      <section className="jp-credits-session jp-credits-noSession">
        <h3>{trans.__('This server')}</h3>
        <p className="jp-credits-muted">{trans.__('No paid session on this server.')}</p>
        {!status.can_spend && <ReadOnly status={status} trans={trans} />}
      </section>
    );
  }
  const now = Date.now();
  const left = model.secondsLeft(now);
  const fraction = paidFraction(session.ready_at, session.paid_until, now, model.offset);
  const warning = left !== null && left <= WARNING_SECONDS ? 'true' : 'false';
  return (
    <section className="jp-credits-session">
      <h3>{label ? trans.__('This server: %1', label) : trans.__('This server')}</h3>
      <dl className="jp-credits-pairs">
        {session.image && (
          <>
            <dt>{trans.__('Image')}</dt>
            <dd>{session.image}</dd>
          </>
        )}
        <dt>{trans.__('Hardware')}</dt>
        <dd>{gpuWords(session, trans)}</dd>
        <dt>{trans.__('Rate')}</dt>
        <dd>{trans.__('%1 per hour', formatAmount(session.rate_per_hour, trans))}</dd>
        <dt>{trans.__('Cost so far')}</dt>
        <dd>{formatAmount(session.cost_so_far, trans)}</dd>
        {session.paid_until && (
          <>
            <dt>{trans.__('Paid until')}</dt>
            <dd>{formatTime(session.paid_until)}</dd>
          </>
        )}
      </dl>
      {left === null ? (
        <p className="jp-credits-timeLeft">{trans.__('Starting: paid time begins when it is ready.')}</p>
      ) : (
        <p className="jp-credits-timeLeft" data-warning={warning}>
          {formatTimeLeft(left, trans)}
        </p>
      )}
      <progress
        className="jp-credits-progress"
        max={1}
        value={fraction ?? 0}
        data-warning={warning}
        aria-label={trans.__('Paid time used')}
      />
      {session.notice && <p className="jp-credits-notice">{session.notice}</p>}
      {status.can_spend ? (
        <ExtendForm model={model} session={session} trans={trans} hoursRef={hoursRef} />
      ) : (
        <ReadOnly status={status} trans={trans} />
      )}
    </section>
  );
}

function ReadOnly({ status, trans }: { status: ICreditsStatus; trans: ITrans }) {
  return (
    <p className="jp-credits-readonly">
      {trans.__("Only %1 can spend %1's credits.", status.user)}
    </p>
  );
}

function ExtendForm({
  model,
  session,
  trans,
  hoursRef
}: Omit<IViewProps, 'status'> & { session: ICreditsSession }) {
  const [hours, setHours] = React.useState('1');
  const [confirming, setConfirming] = React.useState(false);
  const [busy, setBusy] = React.useState(false);
  // The box shows what was asked while the request runs, then what the status says.
  const [autoWanted, setAutoWanted] = React.useState<boolean | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [message, setMessage] = React.useState<string | null>(null);
  // A ref, not state: a second click in the same frame sees it before React re-renders.
  const inFlight = React.useRef(false);
  const cost = extensionCost(hours, session.rate_per_hour, trans);

  const onSubmit = (event: React.FormEvent) => {
    event.preventDefault();
    if (cost.error !== undefined) {
      setError(cost.error);
      return;
    }
    setError(null);
    setMessage(null);
    setConfirming(true);
  };

  const onConfirm = async () => {
    if (inFlight.current || cost.error !== undefined) {
      return;
    }
    inFlight.current = true;
    setBusy(true);
    try {
      const result = await model.extend({ hours: cost.value.hours, key: newKey() });
      if (result.ok) {
        setError(null);
        setMessage(result.message || trans.__('Extended by %1 h.', cost.value.hours));
      } else {
        setMessage(null);
        setError(refusal(result, trans));
      }
      setConfirming(false);
      void model.refresh();
    } finally {
      inFlight.current = false;
      setBusy(false);
    }
  };

  const onAutoExtend = async (event: React.ChangeEvent<HTMLInputElement>) => {
    const wanted = event.target.checked;
    setAutoWanted(wanted);
    try {
      const result = await model.extend({ auto_extend: wanted });
      if (result.ok) {
        setError(null);
        setMessage(
          result.message ||
            (wanted
              ? trans.__('This session will be extended automatically.')
              : trans.__('Automatic extension is off.'))
        );
      } else {
        setMessage(null);
        setError(refusal(result, trans));
      }
      await model.refresh();
    } finally {
      setAutoWanted(null);
    }
  };

  return (
    <form className="jp-credits-extend" onSubmit={onSubmit}>
      <label className="jp-credits-hoursLabel">
        <span>{trans.__('Hours to add')}</span>
        <input
          ref={hoursRef}
          name="hours"
          type="text"
          inputMode="decimal"
          autoComplete="off"
          className="jp-mod-styled jp-credits-hours"
          value={hours}
          disabled={busy}
          onChange={event => {
            setHours(event.target.value);
            setConfirming(false);
          }}
        />
      </label>
      <p className="jp-credits-extendCost" aria-live="polite">
        {cost.error !== undefined ? cost.error : cost.value.text}
      </p>
      {confirming && cost.error === undefined ? (
        <div className="jp-credits-confirm">
          <p>
            {cost.value.rounded
              ? trans.__('Add %1 h for about %2 cr?', cost.value.hours, cost.value.amount)
              : trans.__('Add %1 h for %2 cr?', cost.value.hours, cost.value.amount)}
          </p>
          <button
            type="button"
            className="jp-mod-styled jp-mod-accept"
            disabled={busy}
            onClick={() => void onConfirm()}
          >
            {trans.__('Confirm')}
          </button>
          <button
            type="button"
            className="jp-mod-styled jp-mod-reject"
            disabled={busy}
            onClick={() => setConfirming(false)}
          >
            {trans.__('Cancel')}
          </button>
        </div>
      ) : (
        <button type="submit" className="jp-mod-styled jp-mod-accept" disabled={busy}>
          {trans.__('Extend')}
        </button>
      )}
      <label className="jp-credits-auto">
        <input
          type="checkbox"
          name="auto_extend"
          checked={autoWanted ?? !!session.auto_extend}
          disabled={autoWanted !== null}
          onChange={event => void onAutoExtend(event)}
        />
        <span>{trans.__('Extend automatically')}</span>
      </label>
      {error && (
        <div className="jp-credits-error" role="alert">
          {error}
        </div>
      )}
      {message && (
        <div className="jp-credits-message" role="status">
          {message}
        </div>
      )}
    </form>
  );
}

function Earnings({ earnings, trans }: { earnings: IEarningsToday; trans: ITrans }) {
  const rules = (earnings.rules ?? []).filter(rule => rule.enabled);
  return (
    <section className="jp-credits-earnings">
      <h3>{trans.__('Earned today: %1', formatAmount(earnings.points, trans))}</h3>
      {earnings.frozen && (
        <p className="jp-credits-notice">{trans.__('Earning is paused for this account.')}</p>
      )}
      <ul>
        {rules.map(rule => {
          const words = earningRuleWords(rule, trans);
          return (
            <li key={rule.rule} data-rule={rule.rule}>
              <span className="jp-credits-rule">{words.label}</span>
              <span className="jp-credits-rulePoints">{words.points}</span>
              {words.count && (
                <span className="jp-credits-ruleCount jp-credits-muted">{words.count}</span>
              )}
            </li>
          );
        })}
      </ul>
    </section>
  );
}

/** What became of a run, in words. */
export function runOutcomeWords(run: ITrainingRun, trans: ITrans): string {
  if (run.state === 'held') {
    return trans.__('waiting to be sent');
  }
  const outcome = run.outcome;
  if (!outcome) {
    return trans.__('sent, no answer yet');
  }
  switch (outcome.outcome) {
    case 'earned':
      return trans.__('earned %1 credits', outcome.points);
    case 'capped':
      return outcome.reason
        ? trans.__('capped: %1', outcome.reason)
        : trans.__('capped');
    case 'rejected':
      return outcome.reason
        ? trans.__('not counted: %1', outcome.reason)
        : trans.__('not counted');
    case 'duplicate':
      return trans.__('already counted');
    default:
      return outcome.reason ? `${outcome.outcome}: ${outcome.reason}` : outcome.outcome;
  }
}

function Runs({ runs, trans }: { runs: ITrainingRun[]; trans: ITrans }) {
  return (
    <section className="jp-credits-runs">
      <h3>{trans.__('Training runs')}</h3>
      {runs.length === 0 ? (
        <p className="jp-credits-muted">
          {trans.__('No training runs reported from this server yet.')}
        </p>
      ) : (
        <ul>
          {runs.map(run => (
            <li key={run.key}>
              <span className="jp-credits-runWhat">
                {[
                  formatTime(run.started_at),
                  run.epochs !== null && run.epochs !== undefined
                    ? trans._n('%1 epoch', '%1 epochs', run.epochs)
                    : null,
                  run.duration_s !== null && run.duration_s !== undefined
                    ? formatElapsed(run.duration_s, trans)
                    : null
                ]
                  .filter(Boolean)
                  .join(' · ')}
              </span>
              <span
                className="jp-credits-runOutcome"
                data-outcome={run.outcome?.outcome ?? run.state}
              >
                {runOutcomeWords(run, trans)}
              </span>
              {run.tensorboard_url && (
                <a href={run.tensorboard_url} target="_blank" rel="noopener noreferrer">
                  {trans.__('Open in TensorBoard')}
                </a>
              )}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

/** A small inline SVG of GPU utilisation per minute (0–100 %). */
export function Sparkline({ history, trans }: { history: IGpuMinute[]; trans: ITrans }) {
  const width = 160;
  const height = 32;
  const values = history.map(h => Math.min(100, Math.max(0, Number(h.utilization) || 0)));
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const points = values
    .map((v, i) => `${(i * step).toFixed(1)},${(height - (v / 100) * height).toFixed(1)}`)
    .join(' ');
  const latest = values[values.length - 1];
  return (
    <svg
      className="jp-credits-sparkline"
      width={width}
      height={height}
      viewBox={`0 0 ${width} ${height}`}
      role="img"
      aria-label={trans.__(
        'GPU use over the last %1 minutes; now %2 %',
        values.length,
        Math.round(latest)
      )}
    >
      <polyline points={values.length > 1 ? points : `0,${height} ${width},${height}`} />
    </svg>
  );
}

function Gpu({ history, trans }: { history: IGpuMinute[]; trans: ITrans }) {
  const latest = history[history.length - 1];
  return (
    <section className="jp-credits-gpu">
      <h3>{trans.__('GPU use')}</h3>
      <Sparkline history={history} trans={trans} />
      <span className="jp-credits-muted">
        {' '}
        {trans.__('%1 % at %2', Math.round(Number(latest.utilization) || 0), formatTime(latest.minute))}
      </span>
    </section>
  );
}

function Links({ status, trans }: { status: ICreditsStatus; trans: ITrans }) {
  return (
    <section className="jp-credits-links">
      {status.links?.my_credits && (
        <a href={status.links.my_credits} target="_blank" rel="noopener noreferrer">
          {trans.__('My credits')}
        </a>
      )}
      {status.tensorboard?.url && (
        <a href={status.tensorboard.url} target="_blank" rel="noopener noreferrer">
          {trans.__('TensorBoard')}
        </a>
      )}
    </section>
  );
}

/** The sidebar widget. */
export class CreditsPanel extends ReactWidget implements ICreditsPanel {
  constructor(options: CreditsPanel.IOptions) {
    super();
    this._model = options.model;
    this._trans = options.trans;
    this._activate = options.activate;
    this.id = PANEL_ID;
    this.addClass('jp-credits-Panel');
    this.title.icon = creditsIcon;
    this.title.caption = this._trans.__('Credits');
  }

  openForExtend(): void {
    this._activate();
    // The panel renders on activation: focus once React has drawn the form.
    const focus = (triesLeft: number) => {
      const input = this._hoursRef.current;
      if (input) {
        input.focus();
        input.select();
      } else if (triesLeft > 0) {
        requestAnimationFrame(() => focus(triesLeft - 1));
      }
    };
    requestAnimationFrame(() => focus(30));
  }

  protected render(): JSX.Element {
    return <CreditsView model={this._model} trans={this._trans} hoursRef={this._hoursRef} />;
  }

  private _model: CreditsModel;
  private _trans: ITrans;
  private _activate: () => void;
  private _hoursRef = React.createRef<HTMLInputElement>();
}

export namespace CreditsPanel {
  export interface IOptions {
    model: CreditsModel;
    trans: ITrans;
    /** Show the panel in its sidebar. */
    activate: () => void;
  }
}
