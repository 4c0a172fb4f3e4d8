import { useEffect, useId, useRef, type ReactNode } from 'react';
import { ApiError } from '../api/client';

export function Loading({ what }: { what: string }) {
  return <p className="loading" role="status">Loading {what}…</p>;
}

export function ErrorBox({ error, retry }: { error: unknown; retry?: () => void }) {
  if (!error) return null;
  const msg = error instanceof ApiError ? `${error.message} (${error.code})` : String((error as Error)?.message ?? error);
  return (
    <div className="error" role="alert">
      {msg} {retry && <button onClick={retry}>Retry</button>}
    </div>
  );
}

/** A modal dialog on the native <dialog> element (focus trap, Esc). */
export function Dialog({ title, open, onClose, children }: { title: string; open: boolean; onClose: () => void; children: ReactNode }) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleID = useId();
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return (
    <dialog ref={ref} onClose={onClose} aria-labelledby={titleID}>
      <h2 id={titleID}>{title}</h2>
      {open && children}
    </dialog>
  );
}

export function Confirm({ open, title, body, action, onConfirm, onCancel }: { open: boolean; title: string; body: ReactNode; action: string; onConfirm: () => void; onCancel: () => void }) {
  return (
    <Dialog title={title} open={open} onClose={onCancel}>
      <p>{body}</p>
      <div className="actions">
        <button onClick={onCancel}>Cancel</button>
        <button className="danger" onClick={onConfirm}>
          {action}
        </button>
      </div>
    </Dialog>
  );
}
