# Sidekiq's Web UI for the tests: `REDIS_URL=... PORT=... ruby tests/ruby/sidekiq_web.rb`.
# Sessions are needed for its CSRF protection.
require "securerandom"
require "rack"
require "rack/session/cookie"
require "webrick"
require "sidekiq"
require "sidekiq/web"
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
app = Rack::Builder.new do
  use Rack::Session::Cookie, secret: SecureRandom.hex(32), same_site: true, max_age: 86_400
  run Sidekiq::Web
end
Rack::Handler::WEBrick.run(app, Host: "127.0.0.1", Port: Integer(ENV.fetch("PORT")),
  AccessLog: [], Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN))
