import { describe, expect, it } from 'vitest';
import { recipeToSpec } from './recipe';

describe('recipeToSpec', () => {
  it('maps FROM, RUN, ENV, WORKDIR with comments and continuations', () => {
    const r = `# a tool image
FROM minimal
ENV GREETING=hello
ENV MODE "fast"
WORKDIR /opt
RUN echo $GREETING > /opt/g && \\
    echo done
RUN true
`;
    expect(recipeToSpec(r)).toEqual({ from: 'minimal', run: ['echo $GREETING > /opt/g && echo done', 'true'], env: { GREETING: 'hello', MODE: 'fast' }, workdir: '/opt' });
  });
  it('names the line of what it cannot map', () => {
    expect(() => recipeToSpec('FROM base\nCOPY a /a\n')).toThrow(/line 2: COPY needs the team builds API/);
    expect(() => recipeToSpec('FROM base\nFROBNICATE\n')).toThrow(/line 2: FROBNICATE needs an argument/);
    expect(() => recipeToSpec('FROM base\nFROB x\n')).toThrow(/line 2: unknown instruction FROB/);
    expect(() => recipeToSpec('FROM base\n')).toThrow(/no RUN step/);
    expect(() => recipeToSpec('RUN a\nFROM base\n')).toThrow(/line 2: FROM must come first/);
  });
});
