# The no-op job of scripts/peers/sidekiq.rb. The last of PEERS_JOBS records when it ended.
# Sidekiq logs each job's start and end by default; its own load test (bin/sidekiqload)
# turns that off, and so does this.
require "sidekiq"

Sidekiq.configure_server { |config| config.logger.level = Logger::ERROR }

class PeersNoop
  include Sidekiq::Worker
  TARGET = Integer(ENV.fetch("PEERS_JOBS"))
  DONE = [0]
  LOCK = Mutex.new

  def perform(_n)
    last = LOCK.synchronize { (DONE[0] += 1) == TARGET }
    Sidekiq.redis { |c| c.set("peers:finished", Time.now.to_f.to_s) } if last
  end
end
