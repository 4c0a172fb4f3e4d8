import { useCallback, useEffect, useState, type DragEvent, type FormEvent } from 'react';
import { api, authHeaders, capsulePath, request, type Schemas } from '../api/client';
import { bytes } from '../lib/format';
import { Confirm, ErrorBox, Loading } from '../components/ui';

type Entry = Schemas['FileEntry'];

function join(dir: string, name: string) {
  return (dir.endsWith('/') ? dir : dir + '/') + name;
}
function parent(p: string) {
  const i = p.replace(/\/+$/, '').lastIndexOf('/');
  return i <= 0 ? '/' : p.slice(0, i);
}

/** Uploads with XMLHttpRequest: fetch cannot report upload progress. */
function upload(id: string, path: string, file: File, progress: (f: number) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('PUT', capsulePath(id, `/files?path=${encodeURIComponent(path)}`));
    for (const [k, v] of Object.entries(authHeaders())) x.setRequestHeader(k, v);
    x.setRequestHeader('Content-Type', 'application/octet-stream');
    x.upload.onprogress = (e) => e.lengthComputable && progress(e.loaded / e.total);
    x.onload = () => {
      if (x.status >= 200 && x.status < 300) resolve();
      else {
        let msg = `${x.status}`;
        try {
          msg = JSON.parse(x.responseText).message ?? msg;
        } catch {
          /* not JSON */
        }
        reject(new Error(`upload of ${file.name} failed: ${msg}`));
      }
    };
    x.onerror = () => reject(new Error(`upload of ${file.name} failed: network error`));
    x.send(file);
  });
}

export function Files({ id }: { id: string }) {
  const [dir, setDir] = useState('/');
  const [pathInput, setPathInput] = useState('/');
  const [entries, setEntries] = useState<Entry[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [uploads, setUploads] = useState<Record<string, number>>({});
  const [drag, setDrag] = useState(false);
  const [preview, setPreview] = useState<{ path: string; text: string } | null>(null);
  const [toDelete, setToDelete] = useState<Entry | null>(null);

  const load = useCallback(async () => {
    setEntries(null);
    try {
      const l = await api<Schemas['FileList']>('GET', capsulePath(id, `/files/list?path=${encodeURIComponent(dir)}&depth=1`));
      setEntries([...l.entries].sort((a, b) => (a.type === 'dir' ? 0 : 1) - (b.type === 'dir' ? 0 : 1) || a.name.localeCompare(b.name)));
      setError(null);
    } catch (e) {
      setError(e);
      setEntries([]);
    }
  }, [id, dir]);
  useEffect(() => {
    load();
    setPathInput(dir);
  }, [load, dir]);

  async function sendFiles(files: FileList | File[]) {
    setError(null);
    try {
      await Promise.all(
        [...files].map((f) => upload(id, join(dir, f.name), f, (p) => setUploads((u) => ({ ...u, [f.name]: p })))),
      );
    } catch (e) {
      setError(e);
    } finally {
      setUploads({});
      load();
    }
  }

  async function download(e: Entry) {
    try {
      const res = await request('GET', capsulePath(id, `/files?path=${encodeURIComponent(e.path)}`));
      const url = URL.createObjectURL(await res.blob());
      const a = document.createElement('a');
      a.href = url;
      a.download = e.name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      setError(err);
    }
  }

  async function showPreview(e: Entry) {
    try {
      const res = await request('GET', capsulePath(id, `/files?path=${encodeURIComponent(e.path)}`), { headers: { Range: 'bytes=0-65535' } });
      const buf = new Uint8Array(await res.arrayBuffer()).slice(0, 65536);
      const text = new TextDecoder('utf-8', { fatal: false }).decode(buf);
      setPreview({ path: e.path, text: /\u0000/.test(text) ? '(binary file)' : text });
    } catch (err) {
      setError(err);
    }
  }

  async function mkdir(ev: FormEvent<HTMLFormElement>) {
    ev.preventDefault();
    const name = new FormData(ev.currentTarget).get('folder') as string;
    if (!name) return;
    try {
      await api('POST', capsulePath(id, '/files/mkdir'), { path: join(dir, name) });
      (ev.target as HTMLFormElement).reset();
      load();
    } catch (e) {
      setError(e);
    }
  }

  async function remove(e: Entry) {
    setToDelete(null);
    try {
      await api('DELETE', capsulePath(id, `/files?path=${encodeURIComponent(e.path)}`));
      load();
    } catch (err) {
      setError(err);
    }
  }

  const onDrop = (e: DragEvent) => {
    e.preventDefault();
    setDrag(false);
    if (e.dataTransfer.files.length) sendFiles(e.dataTransfer.files);
  };

  return (
    <div
      className={`files ${drag ? 'drag' : ''}`}
      data-testid="dropzone"
      onDragOver={(e) => {
        e.preventDefault();
        setDrag(true);
      }}
      onDragLeave={() => setDrag(false)}
      onDrop={onDrop}
    >
      <form
        className="bar small"
        onSubmit={(e) => {
          e.preventDefault();
          setDir(pathInput || '/');
        }}
      >
        <button type="button" onClick={() => setDir(parent(dir))} disabled={dir === '/'}>Up</button>
        <label>
          <span className="sr">Folder</span>
          <input aria-label="Folder" name="path" value={pathInput} onChange={(e) => setPathInput(e.target.value)} />
        </label>
        <button type="submit">Go</button>
        <label className="button">
          Upload…
          <input type="file" multiple className="hidden-input" onChange={(e) => e.target.files && sendFiles(e.target.files)} />
        </label>
      </form>
      <form className="bar small" onSubmit={mkdir}>
        <label>
          <span className="sr">New folder name</span>
          <input aria-label="New folder name" name="folder" placeholder="new folder name" />
        </label>
        <button type="submit">New folder</button>
      </form>
      {Object.entries(uploads).map(([n, p]) => (
        <div key={n} className="progress">
          Uploading {n} <progress value={p} max={1} aria-label={`Upload ${n}`} /> {Math.round(p * 100)}%
        </div>
      ))}
      <ErrorBox error={error} retry={load} />
      {entries === null && <Loading what={dir} />}
      {entries !== null && entries.length === 0 && !error && <p className="empty">{dir} is empty. Drop files here to upload them.</p>}
      {entries !== null && entries.length > 0 && (
        <table className="list">
          <thead>
            <tr><th>Name</th><th>Size</th><th>Permissions</th><th><span className="sr">Actions</span></th></tr>
          </thead>
          <tbody>
            {entries.map((e) => (
              <tr key={e.path} data-name={e.name}>
                <td>
                  {e.type === 'dir' ? (
                    <button className="link" onClick={() => setDir(e.path)}>{e.name}/</button>
                  ) : (
                    <button className="link" onClick={() => showPreview(e)}>{e.name}</button>
                  )}
                </td>
                <td>{e.type === 'dir' ? '' : bytes(e.size)}</td>
                <td><code>{e.permissions}</code></td>
                <td>
                  {e.type !== 'dir' && <button onClick={() => download(e)} aria-label={`Download ${e.name}`}>Download</button>}{' '}
                  <button className="danger" onClick={() => setToDelete(e)} aria-label={`Delete ${e.name}`}>Delete</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <p className="hint">Drop files anywhere in this panel to upload them into {dir}.</p>
      {preview && (
        <div className="preview">
          <div className="bar small"><strong>{preview.path}</strong><button onClick={() => setPreview(null)}>Close</button></div>
          <pre>{preview.text}</pre>
        </div>
      )}
      <Confirm open={!!toDelete} title="Delete" body={`Delete ${toDelete?.path}${toDelete?.type === 'dir' ? ' and everything in it' : ''}?`} action="Delete" onCancel={() => setToDelete(null)} onConfirm={() => toDelete && remove(toDelete)} />
    </div>
  );
}
