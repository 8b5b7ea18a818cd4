# Ruby Sidekiq (Debian's ruby-sidekiq) draining the same no-op jobs, reporting in the form
# of the Rust harnesses:
#
#   ruby scripts/peers/sidekiq.rb --redis URL --jobs N --concurrency C
#
# The jobs are pushed with Sidekiq::Client.push_bulk onto a staging queue, a `sidekiq`
# process with C threads is started and, once it has registered, the staging list is renamed
# to its queue in one step: the drain runs from that rename to the last job's end, which
# the last job records in Redis. Sidekiq's defaults otherwise (BRPOP fetch, retries, stats).
require "sidekiq"
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

opts = { redis: "redis://127.0.0.1:6379/15", jobs: 100_000, concurrency: 10 }
ARGV.each_slice(2) do |flag, value|
  case flag
  when "--redis" then opts[:redis] = value
  when "--jobs" then opts[:jobs] = Integer(value)
  when "--concurrency" then opts[:concurrency] = Integer(value)
  else abort "unknown option #{flag}: --redis URL --jobs N --concurrency C"
  end
end
jobs = opts[:jobs]

def cpu_seconds(pid)
  fields = File.read("/proc/#{pid}/stat").rpartition(")").last.split
  (fields[11].to_i + fields[12].to_i) / 100.0
end

def redis_cpu(conn)
  info = conn.info("cpu")
  info["used_cpu_sys"].to_f + info["used_cpu_user"].to_f
end

Sidekiq.configure_client { |c| c.redis = { url: opts[:redis] } }
worker_file = File.join(__dir__, "sidekiq_noop.rb")

Sidekiq.redis do |conn|
  conn.flushdb
  cpu_before = redis_cpu(conn)
  own_before = Process.times.utime + Process.times.stime
  started = Time.now
  (0...jobs).each_slice(1000) do |slice|
    Sidekiq::Client.push_bulk("class" => "PeersNoop", "queue" => "peers-staging",
                              "args" => slice.map { |n| [n] })
  end
  enqueue_s = Time.now - started
  own_cpu = Process.times.utime + Process.times.stime - own_before

  env = { "REDIS_URL" => opts[:redis], "PEERS_JOBS" => jobs.to_s }
  server = spawn(env, "sidekiq", "-q", "peers-ruby", "-c", opts[:concurrency].to_s,
                 "-r", worker_file, "-e", "production", out: File::NULL, err: File::NULL)
  sleep 0.01 until conn.scard("processes") > 0
  server_cpu = cpu_seconds(server)
  conn.multi do |m|
    m.rename("queue:peers-staging", "queue:peers-ruby")
    m.sadd("queues", "peers-ruby")
  end
  drain_started = Time.now.to_f
  sleep 0.002 until (finished = conn.get("peers:finished"))
  drain_s = finished.to_f - drain_started
  server_cpu = cpu_seconds(server) - server_cpu
  redis_us = (redis_cpu(conn) - cpu_before) * 1e6 / jobs
  Process.kill("TERM", server)
  Process.wait(server)
  process_us = (own_cpu + server_cpu) * 1e6 / jobs
  puts format("jobs=%d concurrency=%d enqueue_s=%.3f drain_s=%.3f jobs_per_sec=%.0f " \
              "process_cpu_us_per_job=%.2f redis_cpu_us_per_job=%.2f",
              jobs, opts[:concurrency], enqueue_s, drain_s, jobs / drain_s, process_us, redis_us)
end
