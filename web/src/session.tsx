import { createContext, useCallback, useContext, useEffect, useRef, useState, type ReactNode } from 'react';
import { accessTokens, api, onSessionExpired, setCredential, type Credential, type Me } from './api/client';

type Session = {
  me: Me | null;
  notice: string;
  signIn: (c: Credential) => Promise<void>;
  signOut: (notice?: string) => void;
  setMe: (m: Me) => void;
  /** a GitHub sign-up just happened: the name dialog is due */
  welcome: boolean;
  setWelcome: (w: boolean) => void;
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
  const [welcome, setWelcome] = useState(false);
  const timer = useRef<number | undefined>(undefined);

  const signOut = useCallback((why = '') => {
    setCredential(null);
    accessTokens.clear();
    window.clearTimeout(timer.current);
    setMe(null);
    setWelcome(false);
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

  return <Ctx.Provider value={{ me, notice, signIn, signOut, setMe, welcome, setWelcome }}>{children}</Ctx.Provider>;
}
