import { chooseStopReason, isKnownReason, stopDetail, stopWords } from '../stopreason';

describe('stopWords', () => {
  it.each([
    ['expired', 'Your paid time ran out.'],
    ['admin', 'An administrator stopped your server.'],
    ['gpu_idle', 'Its GPUs stayed idle.'],
    ['user', 'You stopped this server.'],
    ['server_gone', 'Your server was stopped.'],
    [null, 'Your server was stopped.']
  ])('%p → %p', (reason, words) => {
    expect(stopWords(reason)).toBe(words);
  });
});

describe('chooseStopReason', () => {
  it('prefers the event, then the status, then the countdown', () => {
    expect(
      chooseStopReason({ eventReason: 'admin', statusReason: 'expired', countdownRanOut: true })
    ).toBe('admin');
    expect(chooseStopReason({ statusReason: 'gpu_idle', countdownRanOut: true })).toBe('gpu_idle');
    expect(chooseStopReason({ countdownRanOut: true })).toBe('expired');
    expect(chooseStopReason({})).toBeNull();
  });
});

describe('isKnownReason', () => {
  it('knows the reasons that have words of their own', () => {
    expect(['expired', 'admin', 'gpu_idle', 'user'].every(r => isKnownReason(r))).toBe(true);
    expect(isKnownReason('server_gone')).toBe(false);
    expect(isKnownReason(null)).toBe(false);
  });
});

describe('stopDetail', () => {
  it("adds the service's words only where ours are generic and they say more", () => {
    expect(stopDetail('server_gone', 'the spawner lost the server')).toBe(
      'the spawner lost the server'
    );
    expect(stopDetail('admin', 'an administrator stopped it')).toBeNull();
    expect(stopDetail('stopped', 'Your server was stopped')).toBeNull();
    expect(stopDetail(null, 'your server was stopped.')).toBeNull();
    expect(stopDetail('stopped', null)).toBeNull();
  });
});
