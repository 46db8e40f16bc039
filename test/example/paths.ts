/** Paths the example tests use: the bundled model, and the shared evaluation assets when present. */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../', import.meta.url));

/** The bundled default model. */
export const STORIES = `${root}models/stories260K`;

/** First existing path among `../shared/<rel>` (beside the repo) and `/work/shared/<rel>`. */
export function shared(rel: string): string | undefined {
  return [`${root}../shared/${rel}`, `/work/shared/${rel}`].find((p) => existsSync(p));
}
