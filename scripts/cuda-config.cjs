#!/usr/bin/env node
// What binding.gyp needs to build the optional CUDA addon, printed one field at a time:
//   node scripts/cuda-config.cjs with_cuda|nvcc|libdir|gencode|archs
// The CUDA addon is built when nvcc and libcudart_static.a are found (CUDA_PATH, CUDA_HOME, the nvcc on
// PATH, then /usr/local/cuda), unless SCISSORHANDS_CPU_ONLY=1. SCISSORHANDS_CUDA_ARCHS (default
// "80,86,89,90") names the compute capabilities to compile machine code for.
'use strict';
const { existsSync, realpathSync } = require('node:fs');
const { delimiter, dirname, join } = require('node:path');

function findNvcc() {
  const roots = [process.env.CUDA_PATH, process.env.CUDA_HOME].filter(Boolean);
  for (const root of roots) {
    const nvcc = join(root, 'bin', 'nvcc');
    if (existsSync(nvcc)) return nvcc;
  }
  for (const dir of (process.env.PATH || '').split(delimiter)) {
    if (!dir) continue;
    const nvcc = join(dir, 'nvcc');
    if (existsSync(nvcc)) return nvcc;
  }
  return existsSync('/usr/local/cuda/bin/nvcc') ? '/usr/local/cuda/bin/nvcc' : '';
}

function config() {
  const off = process.env.SCISSORHANDS_CPU_ONLY;
  const nvcc = off === '1' || off === 'true' ? '' : findNvcc();
  let libdir = '';
  if (nvcc) {
    const root = dirname(dirname(realpathSync(nvcc)));
    for (const dir of [join(root, 'lib64'), join(root, 'lib'), join(root, 'targets', 'x86_64-linux', 'lib'), '/usr/local/cuda/lib64']) {
      if (existsSync(join(dir, 'libcudart_static.a'))) {
        libdir = dir;
        break;
      }
    }
  }
  const archs = (process.env.SCISSORHANDS_CUDA_ARCHS || '80,86,89,90')
    .split(/[,\s]+/).map((a) => a.replace(/^sm_/, '')).filter((a) => /^\d+a?$/.test(a));
  return {
    with_cuda: nvcc && libdir && process.platform === 'linux' ? '1' : '0',
    nvcc: nvcc || 'nvcc',
    libdir: libdir || '.',
    // Machine code for each architecture, and PTX of the newest so later GPUs can compile it at load.
    gencode: archs.map((a, i) => `-gencode=arch=compute_${a},code=${i === archs.length - 1 ? `[sm_${a},compute_${a}]` : `sm_${a}`}`).join(' '),
    archs: archs.join('_'),
  };
}

const field = process.argv[2];
const values = config();
if (!(field in values)) {
  console.error(`usage: cuda-config.cjs ${Object.keys(values).join('|')}`);
  process.exit(1);
}
process.stdout.write(values[field]);
