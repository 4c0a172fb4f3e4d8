import { createContext, useCallback, useContext, useEffect, useRef, useState, type ReactNode } from 'react';
import { api, onSessionExpired, setCredential, type Credential, type Me } from './api/client';

type Session = {
  me: Me | null;
  notice: string;
  signIn: (c: Credential) => Promise<void>;
  signOut: (notice?: string) => void;
};

const Ctx = createContext<Session | null>(null);

export function useSession(): Session {
  const s = useContext(Ctx);
  if (!s) throw new Error('useSession outside SessionProvider');
  return s;
}

export function SessionProvider({ children }: { children: ReactNode }) {
  const [me, setMe] = useState<Me | null>(null);
  const [notice, setNotice] = useState('');
  const timer = useRef<number | undefined>(undefined);

  const signOut = useCallback((why = '') => {
    setCredential(null);
    window.clearTimeout(timer.current);
    setMe(null);
    setNotice(why);
  }, []);

  const signIn = useCallback(
    async (c: Credential) => {
      setCredential(c);
      try {
        const m = await api<Me>('GET', '/v1/me');
        setMe(m);
        setNotice('');
        window.clearTimeout(timer.current);
        if (c.kind === 'jwt' && c.expiresAt) {
          const ms = Date.parse(c.expiresAt) - Date.now();
          timer.current = window.setTimeout(() => signOut('Your session expired. Sign in again.'), Math.max(0, Math.min(ms, 2 ** 31 - 1)));
        }
      } catch (e) {
        setCredential(null);
        throw e;
      }
    },
    [signOut],
  );

  useEffect(() => {
    onSessionExpired((why) => signOut(`Signed out: ${why}`));
  }, [signOut]);

  return <Ctx.Provider value={{ me, notice, signIn, signOut }}>{children}</Ctx.Provider>;
}
