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
    // FUSE_USE_VERSION 312 matches what we call: fuse_new@FUSE_3.1 and fuse_loop_mt@FUSE_3.12.
    private const string LayoutProgram = """
        #define FUSE_USE_VERSION 312
        #define _FILE_OFFSET_BITS 64
        #include <fuse3/fuse.h>
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
            SIZE(struct fuse_operations); SIZE(struct fuse_args); SIZE(struct fuse_loop_config_v1);
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
            OFF(struct fuse_context, fuse); OFF(struct fuse_context, uid); OFF(struct fuse_context, gid);
            OFF(struct fuse_context, pid); OFF(struct fuse_context, private_data); OFF(struct fuse_context, umask);
            OFF(struct fuse_args, argc); OFF(struct fuse_args, argv); OFF(struct fuse_args, allocated);
            OFF(struct fuse_loop_config_v1, clone_fd); OFF(struct fuse_loop_config_v1, max_idle_threads);
            OFF(struct fuse_conn_info, proto_major); OFF(struct fuse_conn_info, proto_minor);
            OFF(struct fuse_conn_info, max_write); OFF(struct fuse_conn_info, max_read);
            OFF(struct fuse_conn_info, max_readahead); OFF(struct fuse_conn_info, capable);
            OFF(struct fuse_conn_info, want); OFF(struct fuse_conn_info, max_background);
            OFF(struct fuse_conn_info, congestion_threshold);
            OFF(struct fuse_config, entry_timeout); OFF(struct fuse_config, negative_timeout);
            OFF(struct fuse_config, attr_timeout); OFF(struct fuse_config, use_ino);
            OFF(struct fuse_config, direct_io); OFF(struct fuse_config, kernel_cache);
            SIZE(struct fuse_buf); SIZE(struct fuse_bufvec);
            OFF(struct fuse_buf, size); OFF(struct fuse_buf, flags); OFF(struct fuse_buf, mem);
            OFF(struct fuse_buf, fd); OFF(struct fuse_buf, pos);
            OFF(struct fuse_bufvec, count); OFF(struct fuse_bufvec, idx); OFF(struct fuse_bufvec, off);
            OFF(struct fuse_bufvec, buf);
            printf("FUSE_BUF_IS_FD=%d\nFUSE_BUF_FD_SEEK=%d\nFUSE_BUF_FD_RETRY=%d\n",
                (int)FUSE_BUF_IS_FD, (int)FUSE_BUF_FD_SEEK, (int)FUSE_BUF_FD_RETRY);
            printf("FUSE_CAP_SPLICE_WRITE=%d\nFUSE_CAP_SPLICE_MOVE=%d\nFUSE_CAP_SPLICE_READ=%d\n",
                (int)FUSE_CAP_SPLICE_WRITE, (int)FUSE_CAP_SPLICE_MOVE, (int)FUSE_CAP_SPLICE_READ);
        #define OP(f) OFF(struct fuse_operations, f)
            OP(getattr); OP(readlink); OP(mknod); OP(mkdir); OP(unlink); OP(rmdir); OP(symlink); OP(rename);
            OP(link); OP(chmod); OP(chown); OP(truncate); OP(open); OP(read); OP(write); OP(statfs);
            OP(flush); OP(release); OP(fsync); OP(setxattr); OP(getxattr); OP(listxattr); OP(removexattr);
            OP(opendir); OP(readdir); OP(releasedir); OP(fsyncdir); OP(init); OP(destroy); OP(access);
            OP(create); OP(lock); OP(utimens); OP(bmap); OP(ioctl); OP(poll); OP(write_buf); OP(read_buf);
            OP(flock); OP(fallocate); OP(copy_file_range); OP(lseek);

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
        Same("sizeof struct fuse_operations", Unsafe.SizeOf<FuseOperations>());
        Assert.Equal(FuseOperations.PointerCount * IntPtr.Size, Unsafe.SizeOf<FuseOperations>());
        var ops = new (string C, string Managed)[]
        {
            ("getattr", nameof(FuseOperations.GetAttr)), ("readlink", nameof(FuseOperations.ReadLink)),
            ("mknod", nameof(FuseOperations.MkNod)), ("mkdir", nameof(FuseOperations.MkDir)),
            ("unlink", nameof(FuseOperations.Unlink)), ("rmdir", nameof(FuseOperations.RmDir)),
            ("symlink", nameof(FuseOperations.Symlink)), ("rename", nameof(FuseOperations.Rename)),
            ("link", nameof(FuseOperations.Link)), ("chmod", nameof(FuseOperations.Chmod)),
            ("chown", nameof(FuseOperations.Chown)), ("truncate", nameof(FuseOperations.Truncate)),
            ("open", nameof(FuseOperations.Open)), ("read", nameof(FuseOperations.Read)),
            ("write", nameof(FuseOperations.Write)), ("statfs", nameof(FuseOperations.StatFs)),
            ("flush", nameof(FuseOperations.Flush)), ("release", nameof(FuseOperations.Release)),
            ("fsync", nameof(FuseOperations.Fsync)), ("setxattr", nameof(FuseOperations.SetXattr)),
            ("getxattr", nameof(FuseOperations.GetXattr)), ("listxattr", nameof(FuseOperations.ListXattr)),
            ("removexattr", nameof(FuseOperations.RemoveXattr)), ("opendir", nameof(FuseOperations.OpenDir)),
            ("readdir", nameof(FuseOperations.ReadDir)), ("releasedir", nameof(FuseOperations.ReleaseDir)),
            ("fsyncdir", nameof(FuseOperations.FsyncDir)), ("init", nameof(FuseOperations.Init)),
            ("destroy", nameof(FuseOperations.Destroy)), ("access", nameof(FuseOperations.Access)),
            ("create", nameof(FuseOperations.Create)), ("lock", nameof(FuseOperations.Lock)),
            ("utimens", nameof(FuseOperations.Utimens)), ("bmap", nameof(FuseOperations.Bmap)),
            ("ioctl", nameof(FuseOperations.Ioctl)), ("poll", nameof(FuseOperations.Poll)),
            ("write_buf", nameof(FuseOperations.WriteBuf)), ("read_buf", nameof(FuseOperations.ReadBuf)),
            ("flock", nameof(FuseOperations.Flock)), ("fallocate", nameof(FuseOperations.Fallocate)),
            ("copy_file_range", nameof(FuseOperations.CopyFileRange)), ("lseek", nameof(FuseOperations.Lseek)),
        };
        Assert.Equal(FuseOperations.PointerCount, ops.Length);
        foreach (var (c, managed) in ops)
        {
            Same("struct fuse_operations." + c, Off<FuseOperations>(managed));
        }
    }

    [Fact]
    public void ConnInfoAndConfigOffsetsMatchLibfuse()
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

        Same("struct fuse_config.entry_timeout", FuseConfigOffsets.EntryTimeout);
        Same("struct fuse_config.negative_timeout", FuseConfigOffsets.NegativeTimeout);
        Same("struct fuse_config.attr_timeout", FuseConfigOffsets.AttrTimeout);
        Same("struct fuse_config.use_ino", FuseConfigOffsets.UseIno);
        Same("struct fuse_config.direct_io", FuseConfigOffsets.DirectIo);
        Same("struct fuse_config.kernel_cache", FuseConfigOffsets.KernelCache);
        // Fields from offset 80 on moved in libfuse 3.17: we must never write there.
        Assert.True(FuseConfigOffsets.KernelCache + sizeof(int) <= FuseConfigOffsets.WritableLimit);
    }

    [Fact]
    public void ContextArgsAndLoopConfigMatchLibfuse()
    {
        Same("struct fuse_context.fuse", Off<FuseContextNative>(nameof(FuseContextNative.Fuse)));
        Same("struct fuse_context.uid", Off<FuseContextNative>(nameof(FuseContextNative.Uid)));
        Same("struct fuse_context.gid", Off<FuseContextNative>(nameof(FuseContextNative.Gid)));
        Same("struct fuse_context.pid", Off<FuseContextNative>(nameof(FuseContextNative.Pid)));
        Same("struct fuse_context.private_data", Off<FuseContextNative>(nameof(FuseContextNative.PrivateData)));
        Same("struct fuse_context.umask", Off<FuseContextNative>(nameof(FuseContextNative.Umask)));

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
        Assert.NotEqual(IntPtr.Zero, Posix.DlVSym(LibFuse.Handle, "fuse_new", "FUSE_3.1"));
        Assert.NotEqual(IntPtr.Zero, Posix.DlVSym(LibFuse.Handle, "fuse_loop_mt", "FUSE_3.12"));
    }
}
