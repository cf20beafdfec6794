using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;

namespace PrlFuse.Tests.Nbd;

/// <summary>An export the fuzzer may use and the bytes it must read as (the oracle).</summary>
public sealed class NbdFuzzExport
{
    private const int ZeroBlock = 4096;

    public NbdFuzzExport(string name, byte[] content)
    {
        Name = name;
        Content = content;
        var runs = new List<(long, long)>();
        long start = -1;
        for (long at = 0; at + ZeroBlock <= content.Length; at += ZeroBlock)
        {
            bool zero = !content.AsSpan((int)at, ZeroBlock).ContainsAnyExcept((byte)0);
            if (zero && start < 0)
            {
                start = at;
            }
            else if (!zero && start >= 0)
            {
                runs.Add((start, at - start));
                start = -1;
            }
        }

        if (start >= 0)
        {
            runs.Add((start, (content.Length / ZeroBlock * ZeroBlock) - start));
        }

        ZeroRuns = runs;
    }

    public string Name { get; }

    public byte[] Content { get; }

    /// <summary>Runs of whole 4 KiB blocks of zeros: where TRIM and WRITE_ZEROES leave the content as it is.</summary>
    public IReadOnlyList<(long Start, long Length)> ZeroRuns { get; }
}

/// <summary>What the fuzzer does in one connection (or two): a well-behaved session or one kind of misbehaviour.</summary>
public enum NbdCaseKind
{
    ValidSession,
    TruncatedHandshake,
    WrongMagic,
    BadClientFlags,
    OversizedOption,
    UnknownOption,
    MalformedOption,
    UnknownExport,
    OptionAfterGo,
    HugeLength,
    PastEnd,
    UnknownCommand,
    ReadOnlyWrite,
    AbruptClose,
    Garbage,
    TwoConnections,
}

/// <summary>The counts of one fuzzer run and what it found.</summary>
public sealed class NbdFuzzResult
{
    public int Cases;

    public ConcurrentDictionary<NbdCaseKind, int> ByKind { get; } = new();

    public ConcurrentDictionary<string, int> ByOutcome { get; } = new();

    /// <summary>Crashes, hangs, protocol violations, wrong data: each fails the run. Case index and text.</summary>
    public ConcurrentQueue<(int Case, string Text)> Findings { get; } = new();

    /// <summary>Departures from what the protocol recommends (SHOULD), by signature: count and first case.</summary>
    public ConcurrentDictionary<string, (int Count, int First)> Notes { get; } = new();

    public int SentinelReads;

    public string Summary =>
        $"{Cases} cases, {Findings.Count} findings, sentinel reads {SentinelReads}; outcomes: "
        + string.Join(", ", ByOutcome.OrderBy(o => o.Key, StringComparer.Ordinal).Select(o => $"{o.Key} {o.Value}"))
        + "; kinds: " + string.Join(", ", ByKind.OrderBy(k => k.Key).Select(k => $"{k.Key} {k.Value}"));
}

/// <summary>
/// A malformed-client fuzzer for any NBD server: numbered cases from a fixed seed (case N is the same bytes every
/// run, see <see cref="RunCase"/>), each on its own connection with a time limit: well-behaved sessions whose reads
/// are compared with the oracle, and truncated handshakes, wrong magics, oversized and unknown options, options
/// after GO, huge lengths, offsets past the end, unknown commands and flags, writes to read-only exports, abrupt
/// closes and garbage. Writes to writable exports write the oracle's own bytes, and TRIM/WRITE_ZEROES go to ranges
/// that are zeros already, so the content never changes and every read can be checked. A sentinel connection reads
/// and checks all along: other clients go on whatever one client does.
/// </summary>
public sealed class NbdFuzzer(string address, IReadOnlyList<NbdFuzzExport> exports, int seed, TimeSpan timeout, bool tls = false)
{
    private static readonly (NbdCaseKind Kind, int Weight)[] Weights =
    [
        (NbdCaseKind.ValidSession, 16), (NbdCaseKind.TruncatedHandshake, 8), (NbdCaseKind.WrongMagic, 6),
        (NbdCaseKind.BadClientFlags, 3), (NbdCaseKind.OversizedOption, 6), (NbdCaseKind.UnknownOption, 5),
        (NbdCaseKind.MalformedOption, 6), (NbdCaseKind.UnknownExport, 4), (NbdCaseKind.OptionAfterGo, 4),
        (NbdCaseKind.HugeLength, 7), (NbdCaseKind.PastEnd, 8), (NbdCaseKind.UnknownCommand, 7),
        (NbdCaseKind.ReadOnlyWrite, 5), (NbdCaseKind.AbruptClose, 8), (NbdCaseKind.Garbage, 7),
        (NbdCaseKind.TwoConnections, 3),
    ];

    private readonly NbdFuzzResult _result = new();

    public string Address => address;

    /// <summary>Runs cases first..first+count-1 on <paramref name="workers"/> threads, with the sentinel beside them.</summary>
    public NbdFuzzResult Run(int count, int workers, int first = 0, Action<string>? log = null)
    {
        int next = first;
        int end = first + count;
        using var stop = new CancellationTokenSource();
        var sentinel = Task.Factory.StartNew(() => Sentinel(stop.Token), TaskCreationOptions.LongRunning);
        var clock = Stopwatch.StartNew();
        var threads = Enumerable.Range(0, workers).Select(_ => Task.Factory.StartNew(() =>
        {
            for (int i = Interlocked.Increment(ref next) - 1; i < end; i = Interlocked.Increment(ref next) - 1)
            {
                string? finding = RunCase(i);
                if (finding is not null)
                {
                    _result.Findings.Enqueue((i, finding));
                    log?.Invoke("FINDING " + finding);
                }

                int done = Interlocked.Increment(ref _result.Cases);
                if (log is not null && done % 1000 == 0)
                {
                    log($"{done} cases, {_result.Findings.Count} findings, {clock.Elapsed.TotalSeconds:0} s");
                }
            }
        }, TaskCreationOptions.LongRunning)).ToArray();
        Task.WaitAll(threads);
        stop.Cancel();
        sentinel.Wait();
        return _result;
    }

    /// <summary>The kind of case <paramref name="index"/> of this seed.</summary>
    public NbdCaseKind KindOf(int index) => Pick(new Random(Mix(seed, index)));

    /// <summary>Runs case <paramref name="index"/> of this seed; a finding's text (naming the case), or null.</summary>
    public string? RunCase(int index)
    {
        var r = new Random(Mix(seed, index));
        var c = new CaseRun(index, Pick(r), r);
        _result.ByKind.AddOrUpdate(c.Kind, 1, (_, n) => n + 1);
        var clock = Stopwatch.StartNew();
        try
        {
            Dispatch(c);
        }
        catch (FindingException e)
        {
            c.Finding = e.Message;
        }
        catch (NbdTimeoutException e)
        {
            c.Finding = "hang: " + e.Message;
        }
        catch (NbdViolationException e)
        {
            c.Finding = "protocol violation: " + e.Message;
        }
        catch (NbdClosedException e)
        {
            if (c.DropAllowed)
            {
                c.Outcome = "dropped";
            }
            else
            {
                c.Finding = "server closed a well-behaved connection: " + e.Message;
            }
        }
        finally
        {
            foreach (var client in c.Clients)
            {
                client.Dispose();
            }
        }

        _result.ByOutcome.AddOrUpdate(c.Outcome, 1, (_, n) => n + 1);
        foreach (string note in c.Notes)
        {
            _result.Notes.AddOrUpdate($"{c.Kind}: {note}", (1, index), (_, v) => (v.Count + 1, Math.Min(v.First, index)));
        }

        return c.Finding is null
            ? null
            : $"case {index} of seed {seed} ({c.Kind}, {clock.ElapsedMilliseconds} ms): {c.Finding}\n    steps: {string.Join(" | ", c.Steps)}";
    }

    private static NbdCaseKind Pick(Random r)
    {
        int total = Weights.Sum(w => w.Weight);
        int x = r.Next(total);
        foreach (var (kind, weight) in Weights)
        {
            if ((x -= weight) < 0)
            {
                return kind;
            }
        }

        throw new UnreachableException();
    }

    /// <summary>The random stream of one case, as the image fuzzer makes them: stable across processes.</summary>
    private static int Mix(int seed, int index) => Fuzz.FuzzCase.Mix(seed, index);

    private void Dispatch(CaseRun c)
    {
        switch (c.Kind)
        {
            case NbdCaseKind.ValidSession: ValidSession(c); break;
            case NbdCaseKind.TruncatedHandshake: TruncatedHandshake(c); break;
            case NbdCaseKind.WrongMagic: WrongMagic(c); break;
            case NbdCaseKind.BadClientFlags: BadClientFlags(c); break;
            case NbdCaseKind.OversizedOption: OversizedOption(c); break;
            case NbdCaseKind.UnknownOption: UnknownOption(c); break;
            case NbdCaseKind.MalformedOption: MalformedOption(c); break;
            case NbdCaseKind.UnknownExport: UnknownExport(c); break;
            case NbdCaseKind.OptionAfterGo: OptionAfterGo(c); break;
            case NbdCaseKind.HugeLength: HugeLength(c); break;
            case NbdCaseKind.PastEnd: PastEnd(c); break;
            case NbdCaseKind.UnknownCommand: UnknownCommand(c); break;
            case NbdCaseKind.ReadOnlyWrite: ReadOnlyWrite(c); break;
            case NbdCaseKind.AbruptClose: AbruptClose(c); break;
            case NbdCaseKind.Garbage: Garbage(c); break;
            case NbdCaseKind.TwoConnections: TwoConnections(c); break;
            default: throw new UnreachableException();
        }
    }

    // --- the cases ------------------------------------------------------------------------------------------------------

    private void ValidSession(CaseRun c)
    {
        var export = AnyExport(c);
        var client = Open(c);
        Enter(c, client, export);
        Workload(c, client, export, 1 + c.R.Next(12));
        Finish(c, client, transmission: true, orderlyOnly: c.R.Next(2) == 0);
    }

    private void TruncatedHandshake(CaseRun c)
    {
        var client = Open(c);
        int stage = c.R.Next(5);
        c.Step($"truncated at stage {stage}");
        if (stage >= 1)
        {
            client.ReadGreeting();
        }

        if (stage == 2)
        {
            c.Cut();
            client.Send(NbdTestClient.ClientFlagBytes(NbdWire.ClientFixedNewstyle).AsSpan(0, 1 + c.R.Next(3)));
        }
        else if (stage >= 3)
        {
            client.Send(NbdTestClient.ClientFlagBytes(NbdWire.ClientFixedNewstyle | NbdWire.ClientNoZeroes));
            if (stage == 4)
            {
                client.Option(NbdWire.OptStructuredReply, []);
                client.Option(NbdWire.OptList, []);
            }

            byte[] option = c.R.Next(4) switch
            {
                0 => NbdTestClient.OptionBytes(NbdWire.OptGo, NbdTestClient.GoData(AnyExport(c).Name, NbdWire.InfoBlockSize)),
                1 => NbdTestClient.OptionBytes(NbdWire.OptExportName, Encoding.UTF8.GetBytes(AnyExport(c).Name)),
                2 => NbdTestClient.OptionBytes(NbdWire.OptSetMetaContext, NbdTestClient.MetaContextData(AnyExport(c).Name, "base:allocation")),
                _ => NbdTestClient.OptionBytes(NbdWire.OptList, []),
            };
            int cut = 1 + c.R.Next(option.Length - 1);
            c.Step($"{cut} of {option.Length} bytes of an option");
            c.Cut();
            client.Send(option.AsSpan(0, cut));
        }

        c.Cut();
        EndAbruptly(c, client);
    }

    private void WrongMagic(CaseRun c)
    {
        var client = Open(c);
        if (c.R.Next(2) == 0)
        {
            client.Handshake();
            ulong magic = BadMagic(c.R, NbdWire.OptionMagic);
            c.Step($"option magic {magic:x}");
            c.Cut();
            client.Send(NbdTestClient.OptionBytes(NbdWire.OptList, [], magic: magic));
        }
        else
        {
            Enter(c, client, AnyExport(c));
            uint magic = (uint)BadMagic(c.R, NbdWire.RequestMagic);
            c.Step($"request magic {magic:x}");
            c.Cut();
            client.Send(NbdTestClient.RequestBytes(0, NbdWire.CmdRead, 1, 0, 512, magic));
        }

        // The server cannot find the next message after a bad magic: it must drop the connection by itself.
        ExpectClose(c, client, "after a bad magic", halfClose: false);
    }

    private void BadClientFlags(CaseRun c)
    {
        var client = Open(c);
        client.ReadGreeting();
        uint flags = (uint)c.R.Next(1, int.MaxValue) << 2 | (uint)c.R.Next(4);
        c.Step($"client flags {flags:x}");
        c.Cut();
        var bytes = NbdTestClient.ClientFlagBytes(flags).Concat(NbdTestClient.OptionBytes(NbdWire.OptList, [])).ToArray();
        client.Send(bytes);
        // The server must drop a client that sets flags it does not know: an answer to the LIST is a violation.
        try
        {
            var reply = client.ReadOptionReply(NbdWire.OptList);
            throw new FindingException($"server answered ({reply}) after client flags {flags:x} it must refuse");
        }
        catch (NbdViolationException)
        {
            throw new FindingException($"server sent bytes after client flags {flags:x} it must refuse");
        }
    }

    private void OversizedOption(CaseRun c)
    {
        var client = Open(c);
        AnyExport(c);
        client.Handshake();
        uint[] options = [NbdWire.OptList, NbdWire.OptGo, NbdWire.OptInfo, NbdWire.OptExportName, NbdWire.OptStructuredReply, NbdWire.OptSetMetaContext, NbdWire.OptListMetaContext, NbdWire.OptStartTls, NbdWire.OptAbort, 12345];
        uint option = options[c.R.Next(options.Length)];
        bool whole = option != NbdWire.OptStartTls && c.R.Next(2) == 0;
        uint length = whole ? (uint)c.R.Next(4097, 70_000) : c.R.Next(5) switch
        {
            0 => uint.MaxValue,
            1 => 0x80000000,
            2 => 0x7fffffff,
            3 => (32u << 20) + (uint)c.R.Next(1 << 20),
            _ => (uint)c.R.Next(1 << 20, 1 << 30),
        };
        byte[] data = new byte[whole ? length : c.R.Next(65536)];
        c.R.NextBytes(data);
        if (whole && option is NbdWire.OptGo or NbdWire.OptInfo)
        {
            // A name longer than any string may be (4096 bytes), or a name length that lies.
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(data, c.R.Next(2) == 0 ? length - 6 : uint.MaxValue);
        }

        c.Step($"{NbdWire.OptionName(option)} declaring {length} bytes, sending {data.Length}");
        c.Cut();
        client.Send(NbdTestClient.OptionBytes(option, data, length));
        if (!whole)
        {
            ExpectClose(c, client, "after the client's end of stream inside an oversized option", halfClose: true);
            return;
        }

        if (option is NbdWire.OptExportName or NbdWire.OptAbort)
        {
            ExpectClose(c, client, $"after {NbdWire.OptionName(option)} of an oversized name", halfClose: false);
            return;
        }

        var replies = client.ReadOptionReplies(option);
        c.Step($"answer {replies[^1]}");
        if (replies[^1].Type == NbdWire.RepAck && option is NbdWire.OptGo or NbdWire.OptInfo)
        {
            throw new FindingException($"{NbdWire.OptionName(option)} of a {length}-byte option acknowledged");
        }

        if (replies[^1].Type == NbdWire.RepAck)
        {
            c.Note($"{NbdWire.OptionName(option)} with {length} bytes of data acknowledged");
        }

        Continue(c, client);
    }

    private void UnknownOption(CaseRun c)
    {
        var client = Open(c);
        AnyExport(c);
        client.Handshake();
        int count = 1 + c.R.Next(4);
        for (int i = 0; i < count; i++)
        {
            uint option = c.R.Next(5) switch
            {
                0 => 0,
                1 => 4,
                2 => (uint)c.R.Next(12, 1000),
                3 => 0x80000000 | (uint)c.R.Next(),
                _ => (uint)c.R.Next(12, int.MaxValue),
            };
            byte[] data = new byte[c.R.Next(3) == 0 ? 0 : c.R.Next(300)];
            c.R.NextBytes(data);
            c.Step($"{NbdWire.OptionName(option)} with {data.Length} bytes");
            var replies = client.Option(option, data);
            if (replies.Count != 1)
            {
                throw new FindingException($"{replies.Count} replies to unknown {NbdWire.OptionName(option)}");
            }

            if (replies[0].Type != NbdWire.RepErrUnsup)
            {
                c.Note($"unknown option answered {NbdWire.ReplyName(replies[0].Type)}, not ERR_UNSUP");
            }
        }

        // An error reply is the whole answer: the session goes on.
        Enter(c, client, AnyExport(c), handshake: false);
        CheckRandomRead(c, client, c.Export!);
        Finish(c, client, transmission: true);
    }

    private void MalformedOption(CaseRun c)
    {
        var client = Open(c);
        client.Handshake();
        var export = AnyExport(c);
        byte[] name = Encoding.UTF8.GetBytes(export.Name);
        (uint option, byte[] data, string what) = c.R.Next(9) switch
        {
            0 => (NbdWire.OptStartTls, Array.Empty<byte>(), tls ? "STARTTLS with TLS running" : "STARTTLS on a server without TLS"),
            1 => (NbdWire.OptSetMetaContext, NbdTestClient.MetaContextData(export.Name, "base:allocation"), "SET_META_CONTEXT before STRUCTURED_REPLY"),
            2 => (NbdWire.OptGo, Lie(NbdTestClient.GoData(export.Name), 0, (uint)name.Length + 1 + (uint)c.R.Next(1000)), "GO whose name length passes the data"),
            3 => (NbdWire.OptGo, Lie16(NbdTestClient.GoData(export.Name, NbdWire.InfoBlockSize), 4 + name.Length, (ushort)c.R.Next(2, 65536)), "GO with more info requests than data"),
            4 => (NbdWire.OptInfo, NbdTestClient.GoData(export.Name)[..^1], "INFO cut by one byte"),
            5 => (NbdWire.OptList, new byte[1 + c.R.Next(20)], "LIST with data"),
            6 => (NbdWire.OptStructuredReply, new byte[1 + c.R.Next(20)], "STRUCTURED_REPLY with data"),
            7 => (NbdWire.OptListMetaContext, Lie(NbdTestClient.MetaContextData(export.Name, "base:allocation"), 4 + name.Length, (uint)c.R.Next(2, int.MaxValue)), "LIST_META_CONTEXT with more queries than data"),
            _ => (NbdWire.OptGo, new byte[c.R.Next(6)], "GO shorter than its fixed fields"),
        };
        bool structuredFirst = option == NbdWire.OptListMetaContext && client.StructuredReply();
        c.Step(what + (structuredFirst ? " (structured replies on)" : ""));
        c.DropAllowed = true;
        var replies = client.Option(option, data);
        c.Step($"answer {replies[^1]}");
        if (replies[^1].Type == NbdWire.RepAck)
        {
            if (option == NbdWire.OptStartTls)
            {
                throw new FindingException(tls ? "STARTTLS acknowledged with TLS already running" : "STARTTLS acknowledged by a server started without TLS");
            }

            c.Note($"{what}: acknowledged");
        }

        Continue(c, client);
    }

    private void UnknownExport(CaseRun c)
    {
        var client = Open(c);
        client.Handshake();
        string name = c.R.Next(4) switch
        {
            // Near misses (a snapshot's GUID may be accepted in any form Guid.TryParse reads, so none of these parse).
            0 => AnyExport(c).Name + ".raw",
            1 => Guid.NewGuid().ToString("B"),
            2 => AnyExport(c).Name.ToUpperInvariant() + "x",
            _ => RandomText(c.R, 1 + c.R.Next(200)),
        };
        if (c.R.Next(4) == 0)
        {
            c.Step($"EXPORT_NAME {name}");
            client.SendOption(NbdWire.OptExportName, Encoding.UTF8.GetBytes(name));
            c.DropAllowed = true;
            ExpectClose(c, client, "after EXPORT_NAME of an unknown export", halfClose: false);
            return;
        }

        uint option = c.R.Next(2) == 0 ? NbdWire.OptGo : NbdWire.OptInfo;
        c.Step($"{NbdWire.OptionName(option)} {name}");
        uint answer = client.Go(name, option);
        if (answer == NbdWire.RepAck)
        {
            throw new FindingException($"{NbdWire.OptionName(option)} of unknown export '{name}' acknowledged");
        }

        if (answer != NbdWire.RepErrUnknown)
        {
            c.Note($"unknown export answered {NbdWire.ReplyName(answer)}, not ERR_UNKNOWN");
        }

        Enter(c, client, AnyExport(c), handshake: false);
        CheckRandomRead(c, client, c.Export!);
        Finish(c, client, transmission: true);
    }

    private void OptionAfterGo(CaseRun c)
    {
        var client = Open(c);
        Enter(c, client, AnyExport(c));
        byte[] option = c.R.Next(3) switch
        {
            0 => NbdTestClient.OptionBytes(NbdWire.OptGo, NbdTestClient.GoData(c.Export!.Name, NbdWire.InfoBlockSize)),
            1 => NbdTestClient.OptionBytes(NbdWire.OptList, new byte[12]),
            _ => NbdTestClient.OptionBytes(NbdWire.OptStructuredReply, []),
        };
        c.Step($"an option of {option.Length} bytes in the transmission phase");
        c.Cut();
        client.Send(option);
        // 28 bytes or more make a request header with a bad magic (the server drops the connection); fewer leave the
        // server waiting for the rest, until the client's end of stream.
        ExpectClose(c, client, "after an option in the transmission phase", halfClose: option.Length < 28);
    }

    private void HugeLength(CaseRun c)
    {
        var client = Open(c);
        var export = AnyExport(c);
        Enter(c, client, export);
        ushort[] types = [NbdWire.CmdRead, NbdWire.CmdRead, NbdWire.CmdWrite, NbdWire.CmdBlockStatus, NbdWire.CmdTrim, NbdWire.CmdWriteZeroes, NbdWire.CmdCache];
        ushort type = types[c.R.Next(types.Length)];
        uint length = c.R.Next(5) switch
        {
            0 => uint.MaxValue,
            1 => 0x80000000,
            2 => (32u << 20) + 1,
            3 => 64u << 20,
            _ => (uint)c.R.Next(33 << 20, int.MaxValue),
        };
        ulong offset = c.R.Next(2) == 0 ? 0 : (ulong)c.R.NextInt64((long)client.Size) & ~511UL;
        c.Step($"{NbdWire.CommandName(type)} offset={offset} length={length}");
        if (type == NbdWire.CmdWrite)
        {
            // The payload stops far short of the length: the server refuses and drops, or waits for the rest until
            // the client's end of stream. Any success is a write past the end.
            int sent = (int)Math.Min((ulong)c.R.Next(65536), client.Size - offset);
            c.Cut();
            client.SendRequest(0, type, 1, offset, length, export.Content.AsSpan((int)offset, sent));
            client.ShutdownSend();
            var reply = client.ReadReply();
            if (reply.Error == 0)
            {
                throw new FindingException($"success for {reply} on a {client.Size}-byte export");
            }

            ExpectClose(c, client, $"after the client's end of stream inside {reply}", halfClose: false);
            return;
        }

        c.DropAllowed = true;
        var r = client.Transact(0, type, 1, offset, length);
        CheckPastEndReply(c, client, r);
        Continue(c, client);
    }

    private void PastEnd(CaseRun c)
    {
        var client = Open(c);
        var export = AnyExport(c);
        Enter(c, client, export);
        ulong size = client.Size;
        uint length = 1 + (uint)c.R.Next(c.R.Next(2) == 0 ? 4096 : 1 << 20);
        ulong offset = c.R.Next(6) switch
        {
            0 => size,
            1 => size + (ulong)c.R.Next(1, 1 << 30),
            2 => size - Math.Min(size, (ulong)c.R.Next(1, (int)Math.Min(length, int.MaxValue))),
            3 => 1UL << 63,
            4 => ulong.MaxValue - (ulong)c.R.Next((int)length),
            _ => (ulong)c.R.NextInt64(long.MaxValue) | (1UL << 62),
        };
        if (offset + length <= size && offset + length >= offset)
        {
            offset = size;
        }

        ushort[] types = [NbdWire.CmdRead, NbdWire.CmdRead, NbdWire.CmdWrite, NbdWire.CmdWrite, NbdWire.CmdBlockStatus, NbdWire.CmdTrim, NbdWire.CmdWriteZeroes, NbdWire.CmdCache];
        ushort type = types[c.R.Next(types.Length)];
        c.Step($"{NbdWire.CommandName(type)} offset={offset} length={length} size={size}");
        byte[] payload = [];
        if (type == NbdWire.CmdWrite)
        {
            // The whole payload, so the server can stay in step; its part inside the export is the oracle's bytes.
            payload = new byte[length];
            c.R.NextBytes(payload);
            if (offset < size)
            {
                export.Content.AsSpan((int)offset, (int)(size - offset)).CopyTo(payload);
            }
        }

        c.DropAllowed = true;
        var r = client.Transact(0, type, 1, offset, length, payload);
        CheckPastEndReply(c, client, r);
        Continue(c, client);
    }

    private void UnknownCommand(CaseRun c)
    {
        var client = Open(c);
        var export = AnyExport(c);
        Enter(c, client, export);
        ushort type;
        ushort flags;
        if (c.R.Next(2) == 0)
        {
            type = c.R.Next(3) switch
            {
                0 => (ushort)c.R.Next(9, 32),
                1 => (ushort)c.R.Next(9, 65536),
                _ => ushort.MaxValue,
            };
            flags = (ushort)(c.R.Next(4) == 0 ? c.R.Next(65536) : 0);
        }
        else
        {
            ushort[] known = [NbdWire.CmdRead, NbdWire.CmdFlush, NbdWire.CmdBlockStatus, NbdWire.CmdWrite];
            type = known[c.R.Next(known.Length)];
            flags = (ushort)(c.R.Next(3) switch
            {
                0 => 1 << c.R.Next(5, 16),
                1 => c.R.Next(32, 65536) & ~0x1f,
                _ => type == NbdWire.CmdRead && !client.Structured ? NbdWire.CmdFlagDf : NbdWire.CmdFlagReqOne,
            });
            if (flags == 0 || (type == NbdWire.CmdBlockStatus && flags == NbdWire.CmdFlagReqOne))
            {
                flags = 1 << 12;
            }
        }

        uint length = (uint)c.R.Next(1, 8192);
        ulong offset = (ulong)c.R.NextInt64((long)client.Size - length);
        c.Step($"{NbdWire.CommandName(type)} flags={flags:x} offset={offset} length={length}");
        c.DropAllowed = true;
        byte[] payload = type == NbdWire.CmdWrite ? export.Content.AsSpan((int)offset, (int)length).ToArray() : [];
        var r = client.Transact(flags, type, 1, offset, length, payload);
        c.Step($"error {r.Error}");
        if (r.Error == 0)
        {
            if (!NbdWire.IsKnownCommand(type))
            {
                throw new FindingException($"success for unknown {r}");
            }

            c.Note($"{NbdWire.CommandName(type)} with unknown flags {flags:x} succeeded");
            if (type == NbdWire.CmdRead)
            {
                CompareRead(c, export, r);
            }
        }
        else if (r.Error != NbdWire.EInval)
        {
            c.Note($"{(NbdWire.IsKnownCommand(type) ? "unknown flags" : "unknown command")} answered error {r.Error}, not EINVAL");
        }

        Continue(c, client);
    }

    private void ReadOnlyWrite(CaseRun c)
    {
        var client = Open(c);
        var export = AnyExport(c);
        Enter(c, client, export);
        if (!client.ReadOnly)
        {
            // Whether an export is read-only shows only in its flags; this one is not: reads and a clean end.
            c.Step("export writable");
            CheckRandomRead(c, client, export);
            Finish(c, client, transmission: true);
            return;
        }

        ushort[] types = [NbdWire.CmdWrite, NbdWire.CmdWrite, NbdWire.CmdTrim, NbdWire.CmdWriteZeroes];
        ushort type = types[c.R.Next(types.Length)];
        ushort flags = (ushort)(c.R.Next(2) == 0 ? NbdWire.CmdFlagFua : 0);
        if (type == NbdWire.CmdWriteZeroes && c.R.Next(2) == 0)
        {
            flags |= NbdWire.CmdFlagNoHole;
        }

        uint length = (uint)c.R.Next(1, 1 << 20);
        ulong offset = (ulong)c.R.NextInt64((long)client.Size - length + 1);
        byte[] payload = [];
        if (type == NbdWire.CmdWrite)
        {
            payload = new byte[length];
            c.R.NextBytes(payload);
        }

        c.Step($"{NbdWire.CommandName(type)} flags={flags:x} offset={offset} length={length} on read-only {export.Name}");
        c.DropAllowed = true;
        var r = client.Transact(flags, type, 1, offset, length, payload);
        if (r.Error == 0)
        {
            throw new FindingException($"success for {r} on read-only export {export.Name}");
        }

        if (r.Error != NbdWire.EPerm)
        {
            c.Note($"write to a read-only export answered error {r.Error}, not EPERM");
        }

        c.Outcome = "refused";
        CheckRead(c, client, export, (long)offset, (int)length);
        Finish(c, client, transmission: true);
    }

    private void AbruptClose(CaseRun c)
    {
        var client = Open(c);
        var export = AnyExport(c);
        Enter(c, client, export);
        int variant = c.R.Next(4);
        c.Cut();
        switch (variant)
        {
            case 0 when !client.ReadOnly:
                {
                    uint length = (uint)c.R.Next(2, 1 << 20);
                    ulong offset = (ulong)c.R.NextInt64((long)client.Size - length + 1);
                    int sent = c.R.Next((int)length);
                    c.Step($"WRITE offset={offset} length={length}, {sent} bytes of payload sent");
                    client.SendRequest(0, NbdWire.CmdWrite, 1, offset, length, export.Content.AsSpan((int)offset, sent));
                    break;
                }

            case 0 or 1:
                {
                    int reads = 1 + c.R.Next(8);
                    c.Step($"{reads} reads of up to 4 MiB, no reply read");
                    for (int i = 0; i < reads; i++)
                    {
                        uint length = (uint)c.R.Next(1, 4 << 20);
                        client.SendRequest(0, NbdWire.CmdRead, (ulong)i, (ulong)c.R.NextInt64((long)client.Size - length + 1), length);
                    }

                    break;
                }

            case 2:
                {
                    var header = NbdTestClient.RequestBytes(0, NbdWire.CmdRead, 1, 0, 4096);
                    int cut = 1 + c.R.Next(header.Length - 1);
                    c.Step($"{cut} bytes of a request header");
                    client.Send(header.AsSpan(0, cut));
                    break;
                }

            default:
                {
                    uint length = (uint)c.R.Next(1, 1 << 20);
                    c.Step($"READ of {length} bytes, reply read in part");
                    client.SendRequest(0, NbdWire.CmdRead, 1, (ulong)c.R.NextInt64((long)client.Size - length + 1), length);
                    client.Receive(1 + c.R.Next(16), "the start of a reply");
                    break;
                }
        }

        EndAbruptly(c, client);
    }

    private void Garbage(CaseRun c)
    {
        var client = Open(c);
        int phase = c.R.Next(4);
        if (phase == 3)
        {
            Enter(c, client, AnyExport(c));
        }
        else if (phase >= 1)
        {
            client.ReadGreeting();
            if (phase == 2)
            {
                client.Send(NbdTestClient.ClientFlagBytes(NbdWire.ClientFixedNewstyle));
            }
        }

        byte[] garbage = new byte[1 + c.R.Next(c.R.Next(2) == 0 ? 64 : 8192)];
        c.R.NextBytes(garbage);
        if (c.R.Next(3) == 0 && garbage.Length >= 8)
        {
            // Garbage behind a valid magic gets further into the parser.
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(garbage, NbdWire.OptionMagic);
        }

        c.Step($"{garbage.Length} bytes of garbage in phase {phase}");
        c.Cut();
        client.Send(garbage);
        if (c.R.Next(3) == 0)
        {
            client.Reset();
            return;
        }

        ExpectClose(c, client, "after garbage and the client's end of stream", halfClose: true);
    }

    private void TwoConnections(CaseRun c)
    {
        var a = Open(c);
        var b = Open(c);
        var exportA = AnyExport(c);
        var exportB = exports[c.R.Next(exports.Count)];
        a.Handshake();
        b.Handshake();
        EnterAfterHandshake(c, a, exportA);
        EnterAfterHandshake(c, b, exportB);
        uint length = (uint)c.R.Next(1, 1 << 20);
        c.Step("reads on both, then one connection reset mid-request");
        a.SendRequest(0, NbdWire.CmdRead, 1, (ulong)c.R.NextInt64((long)a.Size - length + 1), length);
        var rb = b.Transact(0, NbdWire.CmdRead, 1, (ulong)c.R.NextInt64((long)b.Size - length + 1), length);
        CompareRead(c, exportB, rb);
        a.Reset();
        Workload(c, b, exportB, 1 + c.R.Next(4));
        Finish(c, b, transmission: true);
    }

    // --- steps ----------------------------------------------------------------------------------------------------------

    private NbdTestClient Open(CaseRun c)
    {
        var client = NbdTestClient.Connect(address, timeout, tls);
        c.Clients.Add(client);
        return client;
    }

    private NbdFuzzExport AnyExport(CaseRun c)
    {
        c.Export = exports[c.R.Next(exports.Count)];
        return c.Export;
    }

    /// <summary>A well-behaved negotiation with random choices, ending in the transmission phase of <paramref name="export"/>.</summary>
    private void Enter(CaseRun c, NbdTestClient client, NbdFuzzExport export, bool handshake = true)
    {
        c.Export = export;
        if (handshake)
        {
            client.Handshake(noZeroes: c.R.Next(4) != 0);
        }

        EnterAfterHandshake(c, client, export);
    }

    private void EnterAfterHandshake(CaseRun c, NbdTestClient client, NbdFuzzExport export)
    {
        var steps = new List<string>();
        if (c.R.Next(4) == 0)
        {
            var names = client.List();
            steps.Add("LIST");
            if (!names.Contains(export.Name))
            {
                throw new FindingException($"LIST does not name export {export.Name}: {string.Join(", ", names)}");
            }
        }

        bool structured = client.Structured || (c.R.Next(3) != 0 && client.StructuredReply());
        if (structured)
        {
            steps.Add("STRUCTURED_REPLY");
            if (c.R.Next(3) != 0)
            {
                string[] queries = c.R.Next(3) == 0 ? ["base:allocation", "qemu:allocation-depth"] : ["base:allocation"];
                if (c.R.Next(4) == 0)
                {
                    client.MetaContexts(NbdWire.OptListMetaContext, export.Name);
                    steps.Add("LIST_META_CONTEXT");
                }

                var set = client.MetaContexts(NbdWire.OptSetMetaContext, export.Name, queries)
                    ?? throw new FindingException($"SET_META_CONTEXT {string.Join(",", queries)} refused on {export.Name}");
                if (!set.ContainsValue("base:allocation"))
                {
                    throw new FindingException($"SET_META_CONTEXT did not select base:allocation: {string.Join(", ", set.Values)}");
                }

                steps.Add("SET_META_CONTEXT " + string.Join(",", set.Values));
            }
        }

        if (c.R.Next(5) == 0)
        {
            uint info = client.Go(export.Name, NbdWire.OptInfo, NbdWire.InfoBlockSize);
            steps.Add("INFO");
            if (info != NbdWire.RepAck)
            {
                throw new FindingException($"INFO {export.Name} answered {NbdWire.ReplyName(info)}");
            }
        }

        if (c.R.Next(5) == 0)
        {
            steps.Add("EXPORT_NAME " + export.Name);
            client.ExportName(export.Name);
        }
        else
        {
            steps.Add("GO " + export.Name);
            uint go = client.Go(export.Name, NbdWire.OptGo, c.R.Next(2) == 0 ? [NbdWire.InfoBlockSize] : []);
            if (go != NbdWire.RepAck)
            {
                throw new FindingException($"GO {export.Name} answered {NbdWire.ReplyName(go)}");
            }
        }

        c.Step(string.Join(", ", steps) + $" (flags {client.TransmissionFlags:x})");
        if (client.Size != (ulong)export.Content.Length)
        {
            throw new FindingException($"export {export.Name} has size {client.Size}, the oracle {export.Content.Length}");
        }
    }

    /// <summary>Well-formed requests, some pipelined; every reply checked (reads against the oracle).</summary>
    private void Workload(CaseRun c, NbdTestClient client, NbdFuzzExport export, int count)
    {
        bool writable = !client.ReadOnly;
        ulong handle = 100;
        int depth = c.R.Next(3) == 0 ? 1 + c.R.Next(8) : 1;
        var ops = new List<string>();
        var batch = new List<(ushort, ushort, ulong, ulong, uint, byte[])>();
        for (int i = 0; i < count; i++)
        {
            int op = c.R.Next(14);
            (ushort type, ushort flags, long offset, int length) = op switch
            {
                < 7 => Range(NbdWire.CmdRead),
                < 9 when client.Contexts.Count > 0 => Range(NbdWire.CmdBlockStatus),
                < 11 when writable => Range(NbdWire.CmdWrite),
                11 when writable && client.Has(NbdWire.TxSendWriteZeroes) && export.ZeroRuns.Count > 0 => ZeroRange(NbdWire.CmdWriteZeroes),
                12 when writable && client.Has(NbdWire.TxSendTrim) && export.ZeroRuns.Count > 0 => ZeroRange(NbdWire.CmdTrim),
                13 when client.Has(NbdWire.TxSendFlush) => (NbdWire.CmdFlush, (ushort)0, 0L, 0),
                _ => Range(NbdWire.CmdRead),
            };
            ops.Add($"{NbdWire.CommandName(type)} {flags:x} {offset}+{length}");
            byte[] payload = type == NbdWire.CmdWrite ? export.Content.AsSpan((int)offset, length).ToArray() : [];
            batch.Add((flags, type, handle++, (ulong)offset, (uint)length, payload));
            if (batch.Count >= depth || i == count - 1)
            {
                c.Step(string.Join("; ", ops));
                ops.Clear();
                foreach (var reply in client.Pipeline(batch))
                {
                    CheckReply(c, client, export, reply);
                }

                batch.Clear();
            }
        }

        (ushort, ushort, long, int) Range(ushort type)
        {
            int length = c.R.Next(4) switch
            {
                0 => 1 + c.R.Next(4096),
                1 => 512 * (1 + c.R.Next(128)),
                2 => 1 + c.R.Next(1 << 20),
                _ => 1 + c.R.Next(4 << 20),
            };
            length = Math.Min(length, export.Content.Length);
            long offset = c.R.Next(2) == 0 ? c.R.NextInt64(export.Content.Length - length + 1) : c.R.NextInt64((export.Content.Length - length) / 512 + 1) * 512;
            ushort flags = 0;
            if (type == NbdWire.CmdRead && client.Has(NbdWire.TxSendDf) && length <= 65536 && c.R.Next(3) == 0)
            {
                flags = NbdWire.CmdFlagDf;
            }
            else if (type == NbdWire.CmdBlockStatus && c.R.Next(3) == 0)
            {
                flags = NbdWire.CmdFlagReqOne;
            }
            else if (type == NbdWire.CmdWrite && client.Has(NbdWire.TxSendFua) && c.R.Next(3) == 0)
            {
                flags = NbdWire.CmdFlagFua;
            }

            return (type, flags, offset, length);
        }

        (ushort, ushort, long, int) ZeroRange(ushort type)
        {
            var (start, runLength) = export.ZeroRuns[c.R.Next(export.ZeroRuns.Count)];
            long offset = start + (c.R.NextInt64(runLength / 512) * 512);
            int length = (int)Math.Min(start + runLength - offset, 1 + c.R.Next(2 << 20));
            ushort flags = (ushort)(c.R.Next(3) == 0 && client.Has(NbdWire.TxSendFua) ? NbdWire.CmdFlagFua : 0);
            if (type == NbdWire.CmdWriteZeroes && c.R.Next(2) == 0)
            {
                flags |= NbdWire.CmdFlagNoHole;
            }

            return (type, flags, offset, length);
        }
    }

    private static void CheckReply(CaseRun c, NbdTestClient client, NbdFuzzExport export, NbdTestReply r)
    {
        if (r.Error != 0)
        {
            throw new FindingException($"error {r.Error} for well-formed {r}");
        }

        if (r.Type == NbdWire.CmdRead)
        {
            CompareRead(c, export, r);
        }
        else if (r.Type == NbdWire.CmdBlockStatus)
        {
            foreach (var (id, extents) in r.Extents)
            {
                string context = client.Contexts[id];
                long sum = extents.Sum(e => (long)e.Length);
                if (sum > r.Length)
                {
                    c.Note($"{context} extents of {r} sum to {sum}, past the request");
                }

                if ((r.Flags & NbdWire.CmdFlagReqOne) != 0 && extents.Count != 1)
                {
                    c.Note($"{context}: {extents.Count} extents for NBD_CMD_FLAG_REQ_ONE");
                }

                if (context != "base:allocation")
                {
                    continue;
                }

                long at = (long)r.Offset;
                foreach (var (length, flags) in extents)
                {
                    long end = Math.Min(at + length, export.Content.Length);
                    if ((flags & NbdWire.StateZero) != 0 && at < end && export.Content.AsSpan((int)at, (int)(end - at)).ContainsAnyExcept((byte)0))
                    {
                        throw new FindingException($"base:allocation says [{at}, {end}) reads as zeros, the oracle has data there ({r})");
                    }

                    at += length;
                }
            }
        }
    }

    private static void CompareRead(CaseRun c, NbdFuzzExport export, NbdTestReply r)
    {
        var expected = export.Content.AsSpan((int)r.Offset, (int)r.Length);
        var actual = r.Data ?? new byte[r.Length];
        int diff = expected.CommonPrefixLength(actual);
        if (diff < expected.Length)
        {
            throw new FindingException($"{r} of {export.Name} differs from the oracle at byte {(long)r.Offset + diff} (got {actual[diff]:x2}, want {expected[diff]:x2})");
        }

        c.Reads++;
    }

    private void CheckRead(CaseRun c, NbdTestClient client, NbdFuzzExport export, long offset, int length)
    {
        var r = client.Transact(0, NbdWire.CmdRead, 7, (ulong)offset, (uint)length);
        if (r.Error != 0)
        {
            throw new FindingException($"error {r.Error} for well-formed {r}");
        }

        CompareRead(c, export, r);
    }

    private void CheckRandomRead(CaseRun c, NbdTestClient client, NbdFuzzExport export)
    {
        int length = 1 + c.R.Next(256 << 10);
        long offset = c.R.NextInt64(export.Content.Length - length + 1);
        c.Step($"check READ {offset}+{length}");
        CheckRead(c, client, export, offset, length);
    }

    /// <summary>After an error the server answered: the same session still reads right (or the server dropped it).</summary>
    private void Continue(CaseRun c, NbdTestClient client)
    {
        if (c.Outcome == "served")
        {
            c.Outcome = "refused";
        }

        if (c.Export is null)
        {
            return;
        }

        if (client.Size == 0)
        {
            // Still in the option phase (the fault was an option): finish the negotiation first.
            Enter(c, client, c.Export, handshake: false);
        }

        CheckRandomRead(c, client, c.Export);
        Finish(c, client, transmission: true);
    }

    private static void CheckPastEndReply(CaseRun c, NbdTestClient client, NbdTestReply r)
    {
        c.Step($"error {r.Error}");
        bool past = r.Offset + r.Length > client.Size || r.Offset + r.Length < r.Offset;
        if (r.Error == 0 && past && r.Type != NbdWire.CmdBlockStatus)
        {
            throw new FindingException($"success for {r} on a {client.Size}-byte export");
        }

        if (r.Error == 0 && r.Type == NbdWire.CmdBlockStatus)
        {
            foreach (var (id, extents) in r.Extents)
            {
                ulong sum = extents.Aggregate(0UL, (s, e) => s + e.Length);
                if (r.Offset >= client.Size || r.Offset + sum > client.Size)
                {
                    throw new FindingException($"{client.Contexts[id]} extents past the end for {r}: {sum} bytes on a {client.Size}-byte export");
                }
            }
        }

        if (r.Error != 0 && r.Error != NbdWire.EInval && r.Error != NbdWire.ENoSpc && r.Error != NbdWire.EPerm && r.Error != 75)
        {
            c.Note($"{NbdWire.CommandName(r.Type)} past the end answered error {r.Error}");
        }
    }

    /// <summary>Ends a session the way a client may: DISC/ABORT (the server closes), end of stream, reset or close.</summary>
    private void Finish(CaseRun c, NbdTestClient client, bool transmission, bool orderlyOnly = false)
    {
        switch (orderlyOnly ? 0 : c.R.Next(4))
        {
            case 0:
                if (transmission)
                {
                    c.Step("DISC");
                    client.SendRequest(0, NbdWire.CmdDisc, 9, 0, 0);
                    ExpectClose(c, client, "after NBD_CMD_DISC", halfClose: false);
                }
                else
                {
                    c.Step("ABORT");
                    client.SendOption(NbdWire.OptAbort, []);
                    c.DropAllowed = true;
                    ExpectClose(c, client, "after NBD_OPT_ABORT", halfClose: false);
                }

                break;
            case 1:
                c.Step("end of stream");
                ExpectClose(c, client, "after the client's end of stream", halfClose: true);
                break;
            case 2:
                c.Step("reset");
                client.Reset();
                break;
            default:
                c.Step("close");
                client.Dispose();
                break;
        }
    }

    /// <summary>Ends a connection the client cut short: reset, close, or end of stream (then the server must close).</summary>
    private void EndAbruptly(CaseRun c, NbdTestClient client)
    {
        switch (c.R.Next(3))
        {
            case 0:
                c.Step("reset");
                client.Reset();
                break;
            case 1:
                c.Step("close");
                client.Dispose();
                break;
            default:
                ExpectClose(c, client, "after the client's end of stream", halfClose: true);
                break;
        }
    }

    private void ExpectClose(CaseRun c, NbdTestClient client, string when, bool halfClose)
    {
        c.DropAllowed = true;
        if (halfClose)
        {
            client.ShutdownSend();
        }

        if (!client.WaitForClose(timeout))
        {
            throw new FindingException($"hang: the server kept the connection open {timeout.TotalSeconds:0} s {when}");
        }
    }

    private void Sentinel(CancellationToken stop)
    {
        var r = new Random(seed);
        var c = new CaseRun(-1, NbdCaseKind.ValidSession, r);
        try
        {
            var client = Open(c);
            var export = exports[0];
            Enter(c, client, export);
            while (!stop.IsCancellationRequested)
            {
                CheckRandomRead(c, client, export);
                Interlocked.Increment(ref _result.SentinelReads);
                c.Steps.Clear();
                stop.WaitHandle.WaitOne(20);
            }

            Finish(c, client, transmission: true, orderlyOnly: true);
        }
        catch (Exception e) when (e is FindingException or NbdClosedException or NbdTimeoutException or NbdViolationException)
        {
            _result.Findings.Enqueue((-1, $"sentinel connection (a well-behaved client beside the fuzzer): {e.Message}; {string.Join(" | ", c.Steps)}"));
        }
        finally
        {
            foreach (var client in c.Clients)
            {
                client.Dispose();
            }
        }
    }

    // --- helpers --------------------------------------------------------------------------------------------------------

    private static ulong BadMagic(Random r, ulong good)
    {
        ulong magic = r.Next(3) switch
        {
            0 => good ^ (1UL << r.Next(good > uint.MaxValue ? 64 : 32)),
            1 => good ^ (ulong)r.NextInt64(1, long.MaxValue),
            _ => (ulong)r.NextInt64(),
        };
        if (good <= uint.MaxValue)
        {
            magic &= uint.MaxValue;
        }

        return magic == good ? good ^ 1 : magic;
    }

    private static byte[] Lie(byte[] data, int at, uint value)
    {
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(at), value);
        return data;
    }

    private static byte[] Lie16(byte[] data, int at, ushort value)
    {
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(at), value);
        return data;
    }

    private static string RandomText(Random r, int length)
    {
        var sb = new StringBuilder(length);
        for (int i = 0; i < length; i++)
        {
            sb.Append((char)r.Next(0x21, 0x7f));
        }

        return sb.ToString();
    }

    private sealed class FindingException(string message) : Exception(message);

    private sealed class CaseRun(int index, NbdCaseKind kind, Random r)
    {
        public int Index { get; } = index;

        public NbdCaseKind Kind { get; } = kind;

        public Random R { get; } = r;

        public List<string> Steps { get; } = [];

        public List<string> Notes { get; } = [];

        public List<NbdTestClient> Clients { get; } = [];

        public NbdFuzzExport? Export { get; set; }

        /// <summary>Once the case misbehaved on purpose: the server may drop the connection from here on.</summary>
        public bool DropAllowed { get; set; }

        public string Outcome { get; set; } = "served";

        public string? Finding { get; set; }

        public int Reads { get; set; }

        public void Step(string text) => Steps.Add(text);

        public void Note(string text) => Notes.Add(text);

        /// <summary>The client cuts the exchange short from here on.</summary>
        public void Cut()
        {
            DropAllowed = true;
            Outcome = "cut";
        }
    }
}
