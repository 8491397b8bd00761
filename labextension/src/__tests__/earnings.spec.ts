import { earningRuleWords, ruleLabel } from '../earnings';
import { ITrans } from '../trans';
import { IEarningRule } from '../types';

function rule(overrides: Partial<IEarningRule>): IEarningRule {
  return {
    rule: 'daily_login',
    enabled: true,
    count: 0,
    points: '0.00',
    max_per_day: null,
    max_points_per_day: null,
    ...overrides
  };
}

describe('ruleLabel', () => {
  it.each([
    ['signup', 'Signup bonus'],
    ['daily_login', 'Daily login'],
    ['training_run', 'Training runs'],
    ['efficiency_bonus', 'Efficiency bonus'],
    ['notebook_activity', 'Active notebook time'],
    ['gpu_utilization', 'GPU utilisation'],
    ['model_published', 'Publishing a model']
  ])('%p → %p', (id, label) => {
    expect(ruleLabel(id)).toBe(label);
  });

  it('makes an unknown id readable', () => {
    expect(ruleLabel('dataset_shared')).toBe('Dataset shared');
    expect(ruleLabel('streak__bonus_')).toBe('Streak bonus');
    expect(ruleLabel('')).toBe('');
  });

  it('goes through the translator', () => {
    const trans: ITrans = { __: msgid => `«${msgid}»`, _n: msgid => msgid };
    expect(ruleLabel('daily_login', trans)).toBe('«Daily login»');
  });
});

describe('earningRuleWords', () => {
  it('counts events against the daily cap', () => {
    expect(earningRuleWords(rule({ count: 0, max_per_day: 1, points: '0.00' }))).toEqual({
      label: 'Daily login',
      points: '0.00 cr',
      count: '0 / 1 today'
    });
  });

  it('shows points against the daily cap of points', () => {
    const words = earningRuleWords(
      rule({ rule: 'notebook_activity', count: 3, points: '0.50', max_points_per_day: '2.00' })
    );
    expect(words).toEqual({
      label: 'Active notebook time',
      points: '0.50 of 2.00 cr',
      count: '3 today'
    });
  });

  it('says nothing of a count without a cap while nothing happened', () => {
    expect(earningRuleWords(rule({ rule: 'notebook_activity', max_points_per_day: '1.00' })).count)
      .toBeNull();
  });
});
