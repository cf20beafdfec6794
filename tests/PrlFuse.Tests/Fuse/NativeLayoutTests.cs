using PrlFuse.Core.IO;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PrlFuse.Fuse.Native;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Fuse;

/// <summary>
/// Compiles a C program against the installed libfuse headers and compares every size, offset and
/// bit the binding relies on with the managed definitions.
/// </summary>
public sealed class NativeLayoutTests
{
    // FUSE_USE_VERSION 312 matches what we call: fuse_session_new@FUSE_3.0 and fuse_session_loop_mt@FUSE_3.12.
    private const string LayoutProgram = """
        #define FUSE_USE_VERSION 312
        #define _FILE_OFFSET_BITS 64
        #include <fuse3/fuse.h>
        #include <fuse3/fuse_lowlevel.h>
        #include <stddef.h>
        #include <stdio.h>
        #include <string.h>
        #include <sys/stat.h>
        #include <sys/statvfs.h>

        #define SIZE(t) printf("sizeof %s=%zu\n", #t, sizeof(t))
        #define OFF(t, f) printf("%s.%s=%zu\n", #t, #f, offsetof(t, f))

        int main(void)
        {
            SIZE(struct stat); SIZE(struct statvfs); SIZE(struct timespec);
            SIZE(struct fuse_lowlevel_ops); SIZE(struct fuse_args); SIZE(struct fuse_loop_config_v1);
            SIZE(struct fuse_entry_param);
            OFF(struct stat, st_dev); OFF(struct stat, st_ino); OFF(struct stat, st_nlink);
            OFF(struct stat, st_mode); OFF(struct stat, st_uid); OFF(struct stat, st_gid);
            OFF(struct stat, st_rdev); OFF(struct stat, st_size); OFF(struct stat, st_blksize);
            OFF(struct stat, st_blocks); OFF(struct stat, st_atim); OFF(struct stat, st_mtim);
            OFF(struct stat, st_ctim);
            OFF(struct statvfs, f_bsize); OFF(struct statvfs, f_frsize); OFF(struct statvfs, f_blocks);
            OFF(struct statvfs, f_bfree); OFF(struct statvfs, f_bavail); OFF(struct statvfs, f_files);
            OFF(struct statvfs, f_ffree); OFF(struct statvfs, f_favail); OFF(struct statvfs, f_fsid);
            OFF(struct statvfs, f_flag); OFF(struct statvfs, f_namemax);
            OFF(struct timespec, tv_sec); OFF(struct timespec, tv_nsec);
            OFF(struct fuse_file_info, flags); OFF(struct fuse_file_info, fh);
            OFF(struct fuse_ctx, uid); OFF(struct fuse_ctx, gid); OFF(struct fuse_ctx, pid); OFF(struct fuse_ctx, umask);
            OFF(struct fuse_entry_param, ino); OFF(struct fuse_entry_param, generation); OFF(struct fuse_entry_param, attr);
            OFF(struct fuse_entry_param, attr_timeout); OFF(struct fuse_entry_param, entry_timeout);
            printf("FUSE_SET_ATTR_MODE=%d\nFUSE_SET_ATTR_UID=%d\nFUSE_SET_ATTR_GID=%d\nFUSE_SET_ATTR_SIZE=%d\n",
                FUSE_SET_ATTR_MODE, FUSE_SET_ATTR_UID, FUSE_SET_ATTR_GID, FUSE_SET_ATTR_SIZE);
            printf("FUSE_SET_ATTR_ATIME=%d\nFUSE_SET_ATTR_MTIME=%d\nFUSE_SET_ATTR_ATIME_NOW=%d\nFUSE_SET_ATTR_MTIME_NOW=%d\n",
                FUSE_SET_ATTR_ATIME, FUSE_SET_ATTR_MTIME, FUSE_SET_ATTR_ATIME_NOW, FUSE_SET_ATTR_MTIME_NOW);
            OFF(struct fuse_args, argc); OFF(struct fuse_args, argv); OFF(struct fuse_args, allocated);
            OFF(struct fuse_loop_config_v1, clone_fd); OFF(struct fuse_loop_config_v1, max_idle_threads);
            OFF(struct fuse_conn_info, proto_major); OFF(struct fuse_conn_info, proto_minor);
            OFF(struct fuse_conn_info, max_write); OFF(struct fuse_conn_info, max_read);
            OFF(struct fuse_conn_info, max_readahead); OFF(struct fuse_conn_info, capable);
            OFF(struct fuse_conn_info, want); OFF(struct fuse_conn_info, max_background);
            OFF(struct fuse_conn_info, congestion_threshold);
            SIZE(struct fuse_buf); SIZE(struct fuse_bufvec);
            OFF(struct fuse_buf, size); OFF(struct fuse_buf, flags); OFF(struct fuse_buf, mem);
            OFF(struct fuse_buf, fd); OFF(struct fuse_buf, pos);
            OFF(struct fuse_bufvec, count); OFF(struct fuse_bufvec, idx); OFF(struct fuse_bufvec, off);
            OFF(struct fuse_bufvec, buf);
            printf("FUSE_BUF_IS_FD=%d\nFUSE_BUF_FD_SEEK=%d\nFUSE_BUF_FD_RETRY=%d\n",
                (int)FUSE_BUF_IS_FD, (int)FUSE_BUF_FD_SEEK, (int)FUSE_BUF_FD_RETRY);
            printf("FUSE_CAP_SPLICE_WRITE=%d\nFUSE_CAP_SPLICE_MOVE=%d\nFUSE_CAP_SPLICE_READ=%d\n",
                (int)FUSE_CAP_SPLICE_WRITE, (int)FUSE_CAP_SPLICE_MOVE, (int)FUSE_CAP_SPLICE_READ);
        #define OP(f) OFF(struct fuse_lowlevel_ops, f)
            OP(init); OP(destroy); OP(lookup); OP(forget); OP(getattr); OP(setattr); OP(readlink); OP(mknod);
            OP(mkdir); OP(unlink); OP(rmdir); OP(symlink); OP(rename); OP(link); OP(open); OP(read); OP(write);
            OP(flush); OP(release); OP(fsync); OP(opendir); OP(readdir); OP(releasedir); OP(fsyncdir); OP(statfs);
            OP(setxattr); OP(getxattr); OP(listxattr); OP(removexattr); OP(access); OP(create); OP(getlk);
            OP(setlk); OP(bmap); OP(ioctl); OP(poll); OP(write_buf); OP(retrieve_reply); OP(forget_multi);
            OP(flock); OP(fallocate); OP(readdirplus); OP(copy_file_range); OP(lseek);

            /* Bitfields have no offsetof: set each bit and print the word that follows flags. */
            struct fuse_file_info fi;
            unsigned word;
        #define BIT(f) memset(&fi, 0, sizeof fi); fi.f = 1; memcpy(&word, (char *)&fi + 4, 4); \
            printf("fuse_file_info.%s bit=%u\n", #f, word)
            BIT(writepage); BIT(direct_io); BIT(keep_cache);
            printf("UTIME_NOW=%ld\nUTIME_OMIT=%ld\n", (long)UTIME_NOW, (long)UTIME_OMIT);
            return 0;
        }
        """;

    private static readonly Lazy<Dictionary<string, long>> s_native = new(CompileAndRun);

    private static Dictionary<string, long> Native => s_native.Value;

    private static Dictionary<string, long> CompileAndRun()
    {
        using var dir = new TempFolder("prlfuse-layout");
        string source = dir.Combine("layout.c");
        string exe = dir.Combine("layout");
        File.WriteAllText(source, LayoutProgram);
        string compiled = RunTool("gcc", "-Wall", "-Werror", "-o", exe, source);
        Assert.True(File.Exists(exe), "gcc did not build the layout program (needs gcc and libfuse3-dev): " + compiled);
        var result = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (string line in RunTool(exe).Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = line.LastIndexOf('=');
            result[line[..eq]] = long.Parse(line[(eq + 1)..], CultureInfo.InvariantCulture);
        }
        return result;
    }

    private static string RunTool(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi)!;
        string stdout = p.StandardOutput.ReadToEnd();
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} failed ({p.ExitCode}): {stderr}");
        return stdout;
    }

    // The C compiler's value is the truth; the managed one must equal it.
    private static void Same(string nativeKey, long managed) =>
        Assert.True(Native.TryGetValue(nativeKey, out long native) && native == managed,
            $"{nativeKey}: C says {(Native.TryGetValue(nativeKey, out long n) ? n : "missing")}, managed has {managed}");

    private static long Off<T>(string field) => Marshal.OffsetOf<T>(field).ToInt64();

    [Fact]
    public void StatMatchesGlibc()
    {
        Same("sizeof struct stat", Unsafe.SizeOf<Stat>());
        Assert.Equal(Stat.SizeInBytes, Unsafe.SizeOf<Stat>());
        Same("sizeof struct timespec", Unsafe.SizeOf<TimeSpec>());
        Same("struct timespec.tv_sec", Off<TimeSpec>(nameof(TimeSpec.Seconds)));
        Same("struct timespec.tv_nsec", Off<TimeSpec>(nameof(TimeSpec.Nanoseconds)));
        Same("UTIME_NOW", TimeSpec.UtimeNow);
        Same("UTIME_OMIT", TimeSpec.UtimeOmit);
        var fields = new (string C, string Managed)[]
        {
            ("st_dev", nameof(Stat.Device)), ("st_ino", nameof(Stat.Inode)), ("st_nlink", nameof(Stat.LinkCount)),
            ("st_mode", nameof(Stat.Mode)), ("st_uid", nameof(Stat.Uid)), ("st_gid", nameof(Stat.Gid)),
            ("st_rdev", nameof(Stat.RDevice)), ("st_size", nameof(Stat.Size)), ("st_blksize", nameof(Stat.BlockSize)),
            ("st_blocks", nameof(Stat.Blocks)), ("st_atim", nameof(Stat.AccessTime)),
            ("st_mtim", nameof(Stat.ModifyTime)), ("st_ctim", nameof(Stat.ChangeTime)),
        };
        foreach (var (c, managed) in fields)
        {
            Same("struct stat." + c, Off<Stat>(managed));
        }
    }

    [Fact]
    public void StatVfsMatchesGlibc()
    {
        Same("sizeof struct statvfs", Unsafe.SizeOf<StatVfs>());
        var fields = new (string C, string Managed)[]
        {
            ("f_bsize", nameof(StatVfs.BlockSize)), ("f_frsize", nameof(StatVfs.FragmentSize)),
            ("f_blocks", nameof(StatVfs.Blocks)), ("f_bfree", nameof(StatVfs.BlocksFree)),
            ("f_bavail", nameof(StatVfs.BlocksAvailable)), ("f_files", nameof(StatVfs.Files)),
            ("f_ffree", nameof(StatVfs.FilesFree)), ("f_favail", nameof(StatVfs.FilesAvailable)),
            ("f_fsid", nameof(StatVfs.FsId)), ("f_flag", nameof(StatVfs.Flags)), ("f_namemax", nameof(StatVfs.NameMax)),
        };
        foreach (var (c, managed) in fields)
        {
            Same("struct statvfs." + c, Off<StatVfs>(managed));
        }
    }

    [Fact]
    public void FileInfoMatchesLibfuse()
    {
        Same("struct fuse_file_info.flags", Off<FuseFileInfoNative>(nameof(FuseFileInfoNative.Flags)));
        Same("struct fuse_file_info.fh", Off<FuseFileInfoNative>(nameof(FuseFileInfoNative.Fh)));
        Same("struct fuse_file_info.fh", FuseFileInfoNative.FhOffset);
        Assert.Equal(4, Off<FuseFileInfoNative>(nameof(FuseFileInfoNative.Bits)));
        Same("fuse_file_info.writepage bit", FuseFileInfoNative.WritePageBit);
        Same("fuse_file_info.direct_io bit", FuseFileInfoNative.DirectIoBit);
        Same("fuse_file_info.keep_cache bit", FuseFileInfoNative.KeepCacheBit);
    }

    [Fact]
    public void OperationsTableMatchesLibfuse()
    {
        Same("sizeof struct fuse_lowlevel_ops", Unsafe.SizeOf<FuseLowLevelOperations>());
        Assert.Equal(FuseLowLevelOperations.PointerCount * IntPtr.Size, Unsafe.SizeOf<FuseLowLevelOperations>());
        var ops = new (string C, string Managed)[]
        {
            ("init", nameof(FuseLowLevelOperations.Init)), ("destroy", nameof(FuseLowLevelOperations.Destroy)),
            ("lookup", nameof(FuseLowLevelOperations.Lookup)), ("forget", nameof(FuseLowLevelOperations.Forget)),
            ("getattr", nameof(FuseLowLevelOperations.GetAttr)), ("setattr", nameof(FuseLowLevelOperations.SetAttr)),
            ("readlink", nameof(FuseLowLevelOperations.ReadLink)), ("mknod", nameof(FuseLowLevelOperations.MkNod)),
            ("mkdir", nameof(FuseLowLevelOperations.MkDir)), ("unlink", nameof(FuseLowLevelOperations.Unlink)),
            ("rmdir", nameof(FuseLowLevelOperations.RmDir)), ("symlink", nameof(FuseLowLevelOperations.Symlink)),
            ("rename", nameof(FuseLowLevelOperations.Rename)), ("link", nameof(FuseLowLevelOperations.Link)),
            ("open", nameof(FuseLowLevelOperations.Open)), ("read", nameof(FuseLowLevelOperations.Read)),
            ("write", nameof(FuseLowLevelOperations.Write)), ("flush", nameof(FuseLowLevelOperations.Flush)),
            ("release", nameof(FuseLowLevelOperations.Release)), ("fsync", nameof(FuseLowLevelOperations.Fsync)),
            ("opendir", nameof(FuseLowLevelOperations.OpenDir)), ("readdir", nameof(FuseLowLevelOperations.ReadDir)),
            ("releasedir", nameof(FuseLowLevelOperations.ReleaseDir)), ("fsyncdir", nameof(FuseLowLevelOperations.FsyncDir)),
            ("statfs", nameof(FuseLowLevelOperations.StatFs)), ("setxattr", nameof(FuseLowLevelOperations.SetXattr)),
            ("getxattr", nameof(FuseLowLevelOperations.GetXattr)), ("listxattr", nameof(FuseLowLevelOperations.ListXattr)),
            ("removexattr", nameof(FuseLowLevelOperations.RemoveXattr)), ("access", nameof(FuseLowLevelOperations.Access)),
            ("create", nameof(FuseLowLevelOperations.Create)), ("getlk", nameof(FuseLowLevelOperations.GetLk)),
            ("setlk", nameof(FuseLowLevelOperations.SetLk)), ("bmap", nameof(FuseLowLevelOperations.Bmap)),
            ("ioctl", nameof(FuseLowLevelOperations.Ioctl)), ("poll", nameof(FuseLowLevelOperations.Poll)),
            ("write_buf", nameof(FuseLowLevelOperations.WriteBuf)), ("retrieve_reply", nameof(FuseLowLevelOperations.RetrieveReply)),
            ("forget_multi", nameof(FuseLowLevelOperations.ForgetMulti)), ("flock", nameof(FuseLowLevelOperations.Flock)),
            ("fallocate", nameof(FuseLowLevelOperations.Fallocate)), ("readdirplus", nameof(FuseLowLevelOperations.ReadDirPlus)),
            ("copy_file_range", nameof(FuseLowLevelOperations.CopyFileRange)), ("lseek", nameof(FuseLowLevelOperations.Lseek)),
        };
        Assert.Equal(FuseLowLevelOperations.PointerCount, ops.Length);
        foreach (var (c, managed) in ops)
        {
            Same("struct fuse_lowlevel_ops." + c, Off<FuseLowLevelOperations>(managed));
        }
    }

    [Fact]
    public void EntryParamAndSetAttrBitsMatchLibfuse()
    {
        Same("sizeof struct fuse_entry_param", Unsafe.SizeOf<FuseEntryParam>());
        Same("struct fuse_entry_param.ino", Off<FuseEntryParam>(nameof(FuseEntryParam.Inode)));
        Same("struct fuse_entry_param.generation", Off<FuseEntryParam>(nameof(FuseEntryParam.Generation)));
        Same("struct fuse_entry_param.attr", Off<FuseEntryParam>(nameof(FuseEntryParam.Attributes)));
        Same("struct fuse_entry_param.attr_timeout", Off<FuseEntryParam>(nameof(FuseEntryParam.AttributeTimeout)));
        Same("struct fuse_entry_param.entry_timeout", Off<FuseEntryParam>(nameof(FuseEntryParam.EntryTimeout)));
        Same("FUSE_SET_ATTR_MODE", FuseSetAttr.Mode);
        Same("FUSE_SET_ATTR_UID", FuseSetAttr.Uid);
        Same("FUSE_SET_ATTR_GID", FuseSetAttr.Gid);
        Same("FUSE_SET_ATTR_SIZE", FuseSetAttr.Size);
        Same("FUSE_SET_ATTR_ATIME", FuseSetAttr.AccessTime);
        Same("FUSE_SET_ATTR_MTIME", FuseSetAttr.ModifyTime);
        Same("FUSE_SET_ATTR_ATIME_NOW", FuseSetAttr.AccessTimeNow);
        Same("FUSE_SET_ATTR_MTIME_NOW", FuseSetAttr.ModifyTimeNow);
    }

    [Fact]
    public void ConnInfoOffsetsMatchLibfuse()
    {
        Same("struct fuse_conn_info.proto_major", FuseConnInfoOffsets.ProtoMajor);
        Same("struct fuse_conn_info.proto_minor", FuseConnInfoOffsets.ProtoMinor);
        Same("struct fuse_conn_info.max_write", FuseConnInfoOffsets.MaxWrite);
        Same("struct fuse_conn_info.max_read", FuseConnInfoOffsets.MaxRead);
        Same("struct fuse_conn_info.max_readahead", FuseConnInfoOffsets.MaxReadahead);
        Same("struct fuse_conn_info.capable", FuseConnInfoOffsets.Capable);
        Same("struct fuse_conn_info.want", FuseConnInfoOffsets.Want);
        Same("struct fuse_conn_info.max_background", FuseConnInfoOffsets.MaxBackground);
        Same("struct fuse_conn_info.congestion_threshold", FuseConnInfoOffsets.CongestionThreshold);
    }

    [Fact]
    public void ContextArgsAndLoopConfigMatchLibfuse()
    {
        Same("struct fuse_ctx.uid", Off<FuseCtxNative>(nameof(FuseCtxNative.Uid)));
        Same("struct fuse_ctx.gid", Off<FuseCtxNative>(nameof(FuseCtxNative.Gid)));
        Same("struct fuse_ctx.pid", Off<FuseCtxNative>(nameof(FuseCtxNative.Pid)));
        Same("struct fuse_ctx.umask", Off<FuseCtxNative>(nameof(FuseCtxNative.Umask)));

        Same("sizeof struct fuse_args", Unsafe.SizeOf<FuseArgs>());
        Same("struct fuse_args.argc", Off<FuseArgs>(nameof(FuseArgs.Argc)));
        Same("struct fuse_args.argv", Off<FuseArgs>(nameof(FuseArgs.Argv)));
        Same("struct fuse_args.allocated", Off<FuseArgs>(nameof(FuseArgs.Allocated)));

        Same("sizeof struct fuse_loop_config_v1", Unsafe.SizeOf<FuseLoopConfigV1>());
        Same("struct fuse_loop_config_v1.clone_fd", Off<FuseLoopConfigV1>(nameof(FuseLoopConfigV1.CloneFd)));
        Same("struct fuse_loop_config_v1.max_idle_threads", Off<FuseLoopConfigV1>(nameof(FuseLoopConfigV1.MaxIdleThreads)));
    }

    [Fact]
    public void BufferVectorMatchesLibfuse()
    {
        Same("sizeof struct fuse_buf", Unsafe.SizeOf<FuseBuf>());
        Same("struct fuse_buf.size", Off<FuseBuf>(nameof(FuseBuf.Size)));
        Same("struct fuse_buf.flags", Off<FuseBuf>(nameof(FuseBuf.Flags)));
        Same("struct fuse_buf.mem", Off<FuseBuf>(nameof(FuseBuf.Mem)));
        Same("struct fuse_buf.fd", Off<FuseBuf>(nameof(FuseBuf.Fd)));
        Same("struct fuse_buf.pos", Off<FuseBuf>(nameof(FuseBuf.Pos)));
        Same("sizeof struct fuse_bufvec", Unsafe.SizeOf<FuseBufVec>());
        Same("struct fuse_bufvec.count", Off<FuseBufVec>(nameof(FuseBufVec.Count)));
        Same("struct fuse_bufvec.idx", Off<FuseBufVec>(nameof(FuseBufVec.Idx)));
        Same("struct fuse_bufvec.off", Off<FuseBufVec>(nameof(FuseBufVec.Off)));
        Same("struct fuse_bufvec.buf", Off<FuseBufVec>(nameof(FuseBufVec.Buf)));
        Same("FUSE_BUF_IS_FD", FuseBuf.IsFd);
        Same("FUSE_BUF_FD_SEEK", FuseBuf.FdSeek);
        Same("FUSE_BUF_FD_RETRY", FuseBuf.FdRetry);
        Same("FUSE_CAP_SPLICE_WRITE", FuseCapabilities.SpliceWrite);
        Same("FUSE_CAP_SPLICE_MOVE", FuseCapabilities.SpliceMove);
        Same("FUSE_CAP_SPLICE_READ", FuseCapabilities.SpliceRead);
    }

    [Fact]
    public void LibraryLoadsWithVersionedSymbols()
    {
        Assert.True(LibFuse.IsAvailable, LibFuse.NotInstalledMessage);
        Assert.NotEqual(IntPtr.Zero, LibFuse.Handle);
        // 3.14 here: the 3.12 loop with fuse_loop_cfg_* must be the one picked.
        Assert.True(LibFuse.UsesLoopConfig312);
        Assert.NotEqual(IntPtr.Zero, Posix.DlVSym(LibFuse.Handle, "fuse_session_new", "FUSE_3.0"));
        Assert.NotEqual(IntPtr.Zero, Posix.DlVSym(LibFuse.Handle, "fuse_session_loop_mt", "FUSE_3.12"));
    }
}
