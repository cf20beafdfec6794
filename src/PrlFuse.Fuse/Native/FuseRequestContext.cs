namespace PrlFuse.Fuse.Native;

/// <summary>Who made the current request (fuse_get_context). Only meaningful inside a filesystem callback.</summary>
public readonly record struct FuseRequestContext(uint Uid, uint Gid, int Pid, uint Umask)
{
    public static unsafe FuseRequestContext Current
    {
        get
        {
            FuseContextNative* c = LibFuse.Functions.GetContext();
            return c == null ? default : new FuseRequestContext(c->Uid, c->Gid, c->Pid, c->Umask);
        }
    }
}
