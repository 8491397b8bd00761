/**
 * Today's earnings per rule, in words: "Daily login", "0.50 of 2.00 cr",
 * "0 / 1 today", instead of the rule ids and counters of the JSON.
 */
import { formatAmount } from './format';
import { ITrans, plainTrans } from './trans';
import { IEarningRule } from './types';

/**
 * A rule id in words. The known rules are named as the My credits page names
 * them (one name for one thing); each msgid is a literal so that it can be
 * extracted for translation.
 */
export function ruleLabel(rule: string, trans: ITrans = plainTrans): string {
  switch (rule) {
    case 'signup':
      return trans.__('Signup bonus');
    case 'daily_login':
      return trans.__('Daily login');
    case 'training_run':
      return trans.__('Training runs');
    case 'efficiency_bonus':
      return trans.__('Efficiency bonus');
    case 'notebook_activity':
      return trans.__('Active notebook time');
    case 'gpu_utilization':
      return trans.__('GPU utilisation');
    case 'model_published':
      return trans.__('Publishing a model');
    case 'model_reused':
      return trans.__('Your model reused');
    case 'model_liked':
      return trans.__('Your model liked');
    default: {
      // A rule added later: its id, readable ("new_rule" → "New rule").
      const words = rule.replace(/_+/g, ' ').trim();
      return words ? words.charAt(0).toUpperCase() + words.slice(1) : rule;
    }
  }
}

export interface IRuleWords {
  label: string;
  /** "0.50 of 2.00 cr" against a daily cap of points, else "0.50 cr". */
  points: string;
  /** "0 / 1 today" against a daily cap of events, "3 today" without one, else null. */
  count: string | null;
}

/** One line of "Earned today". */
export function earningRuleWords(rule: IEarningRule, trans: ITrans = plainTrans): IRuleWords {
  const points = rule.max_points_per_day
    ? trans.__('%1 of %2 cr', rule.points, rule.max_points_per_day)
    : formatAmount(rule.points, trans);
  let count: string | null = null;
  if (rule.max_per_day !== null && rule.max_per_day !== undefined) {
    count = trans.__('%1 / %2 today', rule.count, rule.max_per_day);
  } else if (rule.count > 0) {
    count = trans.__('%1 today', rule.count);
  }
  return { label: ruleLabel(rule.rule, trans), points, count };
}
