// A Wrennfile (issue 16's recipe format) mapped onto today's admin build
// spec ({from, run[], env, workdir}), for servers that have only
// POST /v1/admin/builds. Instructions the spec cannot express (COPY, USER,
// START, READY) are refused with the line number: those need the team
// builds API (POST /v1/templates/builds), which takes the recipe as it is.

export type Spec = { from?: string; run: string[]; env?: Record<string, string>; workdir?: string };

export class RecipeError extends Error {}

/** Logical lines: comments and blank lines dropped, `\` continuations joined. */
export function recipeLines(text: string): { n: number; line: string }[] {
  const out: { n: number; line: string }[] = [];
  let acc = '';
  let start = 0;
  text.split('\n').forEach((raw, i) => {
    const l = raw.replace(/\r$/, '');
    if (!acc && /^\s*(#|$)/.test(l)) return;
    if (!acc) start = i + 1;
    if (l.endsWith('\\')) {
      acc += l.slice(0, -1).trim() + ' ';
      return;
    }
    acc += l.trim();
    out.push({ n: start, line: acc.trim() });
    acc = '';
  });
  if (acc.trim()) out.push({ n: start, line: acc.trim() });
  return out;
}

export function recipeToSpec(text: string): Spec {
  const spec: Spec = { run: [] };
  const env: Record<string, string> = {};
  for (const { n, line } of recipeLines(text)) {
    const m = /^(\S+)\s*(.*)$/.exec(line)!;
    const op = m[1].toUpperCase();
    const arg = m[2].trim();
    if (!arg) throw new RecipeError(`line ${n}: ${op} needs an argument`);
    switch (op) {
      case 'FROM':
        if (spec.from !== undefined || spec.run.length) throw new RecipeError(`line ${n}: FROM must come first, once`);
        spec.from = arg;
        break;
      case 'RUN':
        spec.run.push(arg);
        break;
      case 'WORKDIR':
        if (!arg.startsWith('/')) throw new RecipeError(`line ${n}: WORKDIR must be absolute`);
        spec.workdir = arg;
        break;
      case 'ENV': {
        const eq = /^([A-Za-z_][A-Za-z0-9_]*)(?:=|\s+)(.*)$/.exec(arg);
        if (!eq) throw new RecipeError(`line ${n}: ENV takes NAME=value`);
        env[eq[1]] = eq[2].replace(/^"(.*)"$/, '$1');
        break;
      }
      case 'COPY':
      case 'USER':
      case 'START':
      case 'READY':
        throw new RecipeError(`line ${n}: ${op} needs the team builds API (POST /v1/templates/builds), which this server does not have yet`);
      default:
        throw new RecipeError(`line ${n}: unknown instruction ${m[1]}`);
    }
  }
  if (!spec.run.length) throw new RecipeError('the recipe has no RUN step');
  if (Object.keys(env).length) spec.env = env;
  return spec;
}
