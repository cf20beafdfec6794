using System.Globalization;
using System.Net.Sockets;
using System.Text;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Nbd;

/// <summary>
/// TLS and listening: a server given a certificate refuses every option of a client that skips STARTTLS and gives it
/// no data; QEMU's and libnbd's TLS clients read the disk; `serve --listen` on a non-loopback address without TLS is
/// refused unless --insecure. PRLFUSE_NBD_SERVER=qemu-nbd runs the protocol tests against qemu-nbd.
/// </summary>
[Trait("Needs", "Installed")]
[Trait("Needs", "Qemu")]
public sealed class NbdTlsTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public void Tls_only_server_refuses_plaintext()
    {
        using var temp = new TempFolder("nbd-tls");
        var certs = TestCertificates.Make(temp.Folder("tls"));
        var chain = QemuChain.Build(temp.Folder("chain"), 1, [8192], seed: 5, predefinedTop: true);
        string address = $"127.0.0.1:{NbdServerProcess.FreePort()}";
        using var server = NbdServerProcess.ServeChain(chain, address, readOnly: false, tlsDir: certs.ServerDir);

        using (var client = NbdTestClient.Connect(address, Timeout))
        {
            client.Handshake();
            (uint Option, byte[] Data)[] options =
            [
                (NbdWire.OptList, []),
                (NbdWire.OptStructuredReply, []),
                (NbdWire.OptInfo, NbdTestClient.GoData("current")),
                (NbdWire.OptGo, NbdTestClient.GoData("current", NbdWire.InfoBlockSize)),
                (NbdWire.OptListMetaContext, NbdTestClient.MetaContextData("current")),
                (NbdWire.OptSetMetaContext, NbdTestClient.MetaContextData("current", "base:allocation")),
                (NbdWire.OptGo, NbdTestClient.GoData("no-such-export")),
                (4321, [1, 2, 3]),
            ];
            foreach (var (option, data) in options)
            {
                var replies = client.Option(option, data);
                Assert.True(replies.Count == 1 && replies[0].Type == NbdWire.RepErrTlsReqd, $"{NbdWire.OptionName(option)} without TLS answered: {string.Join(", ", replies)}");
            }

            // EXPORT_NAME cannot be answered with an error: the server must close, and must not send the export's size.
            client.SendOption(NbdWire.OptExportName, Encoding.UTF8.GetBytes("current"));
            Assert.True(client.WaitForClose(Timeout, out long received), "the server kept the connection after a plaintext EXPORT_NAME");
            Assert.Equal(0, received);
        }

        // The server does speak TLS: STARTTLS is acknowledged.
        using (var client = NbdTestClient.Connect(address, Timeout))
        {
            client.Handshake();
            var replies = client.Option(NbdWire.OptStartTls, []);
            Assert.True(replies.Count == 1 && replies[0].Type == NbdWire.RepAck, $"STARTTLS answered: {string.Join(", ", replies)}");
        }

        // And libnbd's client without TLS gets nothing either.
        var plain = ProcessRunner.Run("nbdinfo", [$"nbd://{address}/current"], Timeout, check: false);
        Assert.True(plain.ExitCode != 0, $"nbdinfo without TLS succeeded:\n{plain.Stdout}");
        Assert.False(server.HasExited, server.Output);
    }

    [Fact]
    public void Tls_clients_read_the_disk()
    {
        using var temp = new TempFolder("nbd-tls");
        var certs = TestCertificates.Make(temp.Folder("tls"));
        var chain = QemuChain.Build(temp.Folder("chain"), 2, [8192], seed: 6, predefinedTop: true);
        string oracle = temp.Combine("current.raw");
        File.WriteAllBytes(oracle, chain.OracleView(1, temp.Path));
        int port = NbdServerProcess.FreePort();
        using var server = NbdServerProcess.ServeChain(chain, $"127.0.0.1:{port}", readOnly: true, tlsDir: certs.ServerDir);

        string creds = $"tls-creds-x509,id=tls0,dir={certs.ClientDir},endpoint=client";
        string nbd = $"driver=nbd,host=127.0.0.1,port={port},export=current,tls-creds=tls0";
        var info = ProcessRunner.Run("qemu-img", ["info", "--object", creds, "--image-opts", nbd], Timeout, check: false);
        Assert.True(info.ExitCode == 0, $"qemu-img info over TLS: exit {info.ExitCode}\n{info.Stderr}\nserver:\n{server.Output}");
        Assert.Contains(string.Create(CultureInfo.InvariantCulture, $"({chain.SizeBytes} bytes)"), info.Stdout, StringComparison.Ordinal);

        var compare = ProcessRunner.Run("qemu-img", ["compare", "--object", creds, "--image-opts", $"driver=raw,file.filename={oracle}", nbd], Timeout, check: false);
        Assert.True(compare.ExitCode == 0, $"qemu-img compare over TLS: exit {compare.ExitCode}\n{compare.Stdout}{compare.Stderr}");

        var nbdinfo = ProcessRunner.Run("nbdinfo", [$"nbds://127.0.0.1:{port}/current?tls-certificates={certs.ClientDir}"], Timeout, check: false);
        Assert.True(nbdinfo.ExitCode == 0, $"nbdinfo over TLS: exit {nbdinfo.ExitCode}\n{nbdinfo.Stderr}");
        Assert.Contains("with TLS", nbdinfo.Stdout, StringComparison.Ordinal);
        Assert.False(server.HasExited, server.Output);
    }

    [Fact]
    public void Listen_on_a_public_address_needs_tls_or_insecure()
    {
        if (NbdServerProcess.IsQemu)
        {
            return; // a prlfuse rule: qemu-nbd listens wherever it is told
        }

        using var temp = new TempFolder("nbd-listen");
        var chain = QemuChain.Build(temp.Folder("chain"), 1, [8192], seed: 7, predefinedTop: true);
        int port = NbdServerProcess.FreePort();
        var refused = ProcessRunner.Run(PrlFuseCli.Binary, ["serve", chain.Bundle, "--listen", $"0.0.0.0:{port}"], Timeout, check: false);
        Assert.True(refused.ExitCode != 0, $"serve --listen 0.0.0.0 without TLS or --insecure exited 0:\n{refused.Stdout}{refused.Stderr}");
        var lines = refused.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"the refusal is not one line:\n{refused.Stderr}");
        Assert.True(lines[0].Contains("--insecure", StringComparison.Ordinal) || lines[0].Contains("--tls", StringComparison.Ordinal), $"the refusal does not say what to do: {lines[0]}");
        Assert.Throws<SocketException>(() => new TcpClient().Connect("127.0.0.1", port));

        // With --insecure it serves, and on loopback it needs neither.
        foreach (var (listen, extra) in new[] { ($"0.0.0.0:{port}", new[] { "--insecure" }), ($"127.0.0.1:{NbdServerProcess.FreePort()}", Array.Empty<string>()) })
        {
            string address = "127.0.0.1:" + listen[(listen.LastIndexOf(':') + 1)..];
            using var server = NbdServerProcess.Start(PrlFuseCli.Binary, ["serve", chain.Bundle, "--listen", listen, .. extra], address);
            using var client = NbdTestClient.Connect(address, Timeout);
            client.Handshake();
            Assert.Equal(NbdWire.RepAck, client.Go("current"));
            Assert.Equal((ulong)chain.SizeBytes, client.Size);
        }
    }
}

/// <summary>A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it, made with openssl.</summary>
public sealed record TestCertificates(string ServerDir, string ClientDir)
{
    /// <summary>
    /// ServerDir holds ca-cert.pem, server-cert.pem and server-key.pem (the names QEMU's tls-creds-x509 reads);
    /// ClientDir holds ca-cert.pem only (QEMU's and libnbd's clients: no client certificate).
    /// </summary>
    public static TestCertificates Make(string folder)
    {
        string server = Directory.CreateDirectory(Path.Combine(folder, "server")).FullName;
        string client = Directory.CreateDirectory(Path.Combine(folder, "client")).FullName;
        string P(string name) => Path.Combine(server, name);
        ProcessRunner.Run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", P("ca-key.pem"), "-out", P("ca-cert.pem"), "-days", "2",
            "-subj", "/CN=prlfuse test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
        ProcessRunner.Run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", P("server-key.pem"), "-out", P("server.csr"), "-subj", "/CN=localhost");
        File.WriteAllText(P("server.ext"), "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n");
        ProcessRunner.Run("openssl", "x509", "-req", "-in", P("server.csr"), "-CA", P("ca-cert.pem"), "-CAkey", P("ca-key.pem"), "-CAcreateserial",
            "-out", P("server-cert.pem"), "-days", "2", "-extfile", P("server.ext"));
        File.Copy(P("ca-cert.pem"), Path.Combine(client, "ca-cert.pem"));
        return new TestCertificates(server, client);
    }
}
