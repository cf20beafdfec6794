namespace PrlFuse.Fuse.Native;

/// <summary>Who made the current request (fuse_req_ctx). Only meaningful inside a filesystem callback.</summary>
public readonly record struct FuseRequestContext(uint Uid, uint Gid, int Pid, uint Umask)
{
    public static unsafe FuseRequestContext Current
    {
        get
        {
            IntPtr request = FuseCallbacks.CurrentRequest;
            if (request == IntPtr.Zero)
            {
                return FuseRequestDispatcher.CurrentCaller; // served without libfuse (or outside a callback: default)
            }

            FuseCtxNative* c = LibFuse.Functions.RequestContext(request);
            return c == null ? default : new FuseRequestContext(c->Uid, c->Gid, c->Pid, c->Umask);
        }
    }
}
