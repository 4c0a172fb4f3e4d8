import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// The build lands in internal/web/dist, which the wrenn binary embeds.
export default defineConfig({
  plugins: [react()],
  build: {
    outDir: '../internal/web/dist',
    emptyOutDir: false, // keeps dist/.gitkeep
    target: 'es2022',
    sourcemap: false,
    chunkSizeWarningLimit: 400,
  },
  server: {
    proxy: { '/v1': { target: 'http://127.0.0.1:9725', ws: true }, '/openapi.yaml': 'http://127.0.0.1:9725' },
  },
  test: { environment: 'node', include: ['src/**/*.test.ts'] },
});
