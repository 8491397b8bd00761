import {
  IServerStopped,
  IStopKnowledge,
  describeStatus,
  isLaterSession,
  serverStopped
} from '../serverstate';
import { ITrans } from '../trans';
import { ICreditsSession, ICreditsStatus } from '../types';

const SESSION: ICreditsSession = {
  id: 7,
  requested_at: '2026-03-04T12:00:00.123456+00:00',
  ready_at: '2026-03-04T12:00:05+00:00',
  paid_until: '2026-03-04T14:00:05+00:00',
  state: 'running'
};

function status(overrides: Partial<ICreditsStatus> = {}): ICreditsStatus {
  return {
    available: true,
    error: null,
    retry_in: null,
    fetched_at: '2026-03-04T12:00:10Z',
    now: '2026-03-04T12:00:10Z',
    user: 'alice',
    viewer: 'alice',
    can_spend: true,
    server: { name: '', label: 'default', id: 'alice/' },
    balance: { available: '97.25', reserved: '2.75' },
    session: SESSION,
    stop: null,
    warning_thresholds: [600, 60],
    earnings_today: null,
    runs: [],
    gpu_history: null,
    tensorboard: null,
    links: {},
    ...overrides
  };
}

const STOPPED: IServerStopped = {
  reason: 'admin',
  message: 'an administrator stopped it',
  at: '2026-03-04T12:30:00Z',
  session: SESSION
};

describe('describeStatus', () => {
  it('counts down an open session', () => {
    expect(describeStatus({ status: status(), secondsLeft: 2 * 3600 + 42 * 60, stopped: null }))
      .toEqual({ state: 'ok', text: '97.25 cr · 2 h 42 min left' });
    expect(describeStatus({ status: status(), secondsLeft: 600, stopped: null }).state)
      .toBe('warning');
    expect(describeStatus({ status: status(), secondsLeft: 601, stopped: null }).state)
      .toBe('ok');
  });

  it('shows the balance alone without a session, and says when it cannot', () => {
    expect(describeStatus({ status: status({ session: null }), secondsLeft: null, stopped: null }))
      .toEqual({ state: 'none', text: '97.25 cr' });
    expect(describeStatus({ status: null, secondsLeft: null, stopped: null }).state)
      .toBe('unavailable');
    expect(
      describeStatus({ status: status({ available: false, balance: null }), secondsLeft: null, stopped: null })
        .state
    ).toBe('unavailable');
  });

  it('says "Server stopped" once stopped, whatever the last status counted', () => {
    // The last status still has the session and hours of paid time: the admin stopped it.
    expect(describeStatus({ status: status(), secondsLeft: 9720, stopped: STOPPED }))
      .toEqual({ state: 'stopped', text: 'Server stopped' });
    // No status ever arrived (the server went away first): still stopped, not unavailable.
    expect(describeStatus({ status: null, secondsLeft: null, stopped: STOPPED }).state)
      .toBe('stopped');
  });

  it('goes through the translator', () => {
    const trans: ITrans = { __: msgid => `«${msgid}»`, _n: msgid => msgid };
    expect(describeStatus({ status: status(), secondsLeft: 5, stopped: STOPPED }, trans).text)
      .toBe('«Server stopped»');
  });
});

describe('serverStopped', () => {
  const nothing: IStopKnowledge = {
    eventArrived: false,
    dialogShown: false,
    freshStop: false,
    sessionOpen: true,
    countdownRanOut: false,
    serverGone: false
  };

  it('is not stopped while nothing is known, even when a poll fails', () => {
    expect(serverStopped(nothing)).toBe(false);
    expect(serverStopped({ ...nothing, serverGone: true })).toBe(false);
  });

  it('is stopped once the server said so or the dialog did', () => {
    expect(serverStopped({ ...nothing, eventArrived: true })).toBe(true);
    expect(serverStopped({ ...nothing, dialogShown: true })).toBe(true);
  });

  it('is stopped when the service ended the session', () => {
    expect(serverStopped({ ...nothing, freshStop: true, sessionOpen: false })).toBe(true);
  });

  it('is stopped when a known or due stop is followed by a gone server', () => {
    expect(serverStopped({ ...nothing, freshStop: true, serverGone: true })).toBe(true);
    expect(serverStopped({ ...nothing, countdownRanOut: true, serverGone: true })).toBe(true);
  });

  it('is not stopped at 0 s left while the server answers (it may be auto-extended)', () => {
    expect(serverStopped({ ...nothing, countdownRanOut: true })).toBe(false);
  });
});

describe('isLaterSession', () => {
  it('tells the stopped session seen again (a cached status) from a new one', () => {
    expect(isLaterSession(STOPPED, SESSION)).toBe(false);
    expect(isLaterSession(STOPPED, { ...SESSION, id: 8 })).toBe(true);
    expect(isLaterSession(STOPPED, null)).toBe(false);
    expect(isLaterSession(STOPPED, { ...SESSION, id: 8, state: 'ended' })).toBe(false);
  });

  it('compares start times where sessions have no id', () => {
    const before = { ...STOPPED, session: { ...SESSION, id: undefined } };
    expect(isLaterSession(before, { ...SESSION, id: undefined })).toBe(false);
    expect(
      isLaterSession(before, { ...SESSION, id: undefined, requested_at: '2026-03-04T13:00:00Z' })
    ).toBe(true);
  });

  it('without the stopped session, counts only a session requested after the stop', () => {
    const before = { ...STOPPED, session: null };
    expect(isLaterSession(before, SESSION)).toBe(false);
    expect(isLaterSession(before, { ...SESSION, requested_at: '2026-03-04T12:31:00Z' })).toBe(true);
    expect(isLaterSession({ ...before, at: null }, SESSION)).toBe(false);
  });
});
